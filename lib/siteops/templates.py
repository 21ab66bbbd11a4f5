"""Rendering of the files under templates/ with string.Template."""

import functools
from string import Template

from .paths import TEMPLATES


@functools.cache
def template(name: str) -> Template:
    """templates/<name>, read once per run (audit renders each for every site)."""
    return Template((TEMPLATES / name).read_text())


def render(template_name: str, /, **values: object) -> str:
    """Return templates/<name> with $keys substituted; a missing key raises KeyError."""
    return template(template_name).substitute({k: str(v) for k, v in values.items()})
