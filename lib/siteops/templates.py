"""Rendering of the files under templates/ with string.Template."""

from string import Template

from .paths import TEMPLATES


def render(template: str, /, **values: object) -> str:
    """Return templates/<name> with $keys substituted; a missing key raises KeyError."""
    text = (TEMPLATES / template).read_text()
    return Template(text).substitute({k: str(v) for k, v in values.items()})
