"""The user documentation stays whole: every command in bin/, every long
option of every command's --help, and every key siteops.toml accepts appear
in the README or docs/. Removing one fails this test."""

import argparse
import importlib
from pathlib import Path

import pytest

from siteops import manifest

ROOT = Path(__file__).resolve().parents[2]
DOCS = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
COMMANDS = sorted(p.name for p in (ROOT / "bin").iterdir() if p.is_file())


def parsers(name: str):
    """The command's parser and its subcommands' parsers."""
    module = importlib.import_module(f"siteops.commands.{name.replace('-', '_')}")
    stack = [module.build_parser()]
    if hasattr(module, "build_drain_parser"):  # logs NAME drain ...
        stack.append(module.build_drain_parser())
    while stack:
        p = stack.pop()
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())


def test_the_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert pages and [p for p in pages if f"(docs/{p})" not in readme] == []


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_and_long_option_is_documented(command):
    assert f"`{command}" in DOCS or f"bin/{command}" in DOCS, command
    missing = sorted({opt for p in parsers(command) for action in p._actions
                      for opt in action.option_strings
                      if opt.startswith("--") and opt != "--help" and opt not in DOCS})
    assert missing == [], f"{command}: {missing} appear nowhere in README.md or docs/"


def test_every_siteops_toml_key_is_documented():
    keys = (manifest.TOP_KEYS - set(manifest.COMPONENTS)) | manifest.COMPONENT_KEYS \
        | {"command", "count", "schedule"}
    keys |= set(manifest.PHP_SETTINGS)
    missing = sorted(k for k in keys if f"{k} =" not in DOCS and f"[{k}." not in DOCS
                     and f"[{k}]" not in DOCS)
    assert missing == [], f"siteops.toml keys not documented: {missing}"
    for component in manifest.COMPONENTS:
        assert f"[{component}]" in DOCS or f"`[{component}]" in DOCS or component in DOCS


def test_a_dropped_option_would_be_noticed(monkeypatch):
    """The check itself can fail: an option the docs lack is reported."""
    monkeypatch.setattr(f"{__name__}.DOCS", DOCS.replace("--keep-data", "--kept"))
    with pytest.raises(AssertionError, match="--keep-data"):
        test_every_command_and_long_option_is_documented("remove-site")


def test_the_layout_page_names_every_module():
    """docs/layout.md cannot drift from the tree: every module of the library
    is named there."""
    layout = (ROOT / "docs" / "layout.md").read_text()
    lib = ROOT / "lib" / "siteops"
    modules = [p.stem for p in [*lib.glob("*.py"), *(lib / "ops").glob("*.py")]
               if p.stem != "__init__"]
    missing = [m for m in modules if f"`{m}`" not in layout and f"{m}.py" not in layout]
    assert missing == [], f"docs/layout.md does not name {missing}"


def test_the_deploy_page_has_the_steps_of_deploy_help_in_their_order():
    """docs/deploying.md's numbered steps are deploy --help's, by name: a step
    added to one and not the other fails here."""
    import re
    from siteops.commands import deploy
    block = deploy.DESCRIPTION.split("Steps:\n", 1)[1].split("\n\n", 1)[0]
    helped = re.findall(r"^  ([a-z]+)\s", block, re.M)
    page = (ROOT / "docs" / "deploying.md").read_text()
    documented = re.findall(r"^\d+\. \*\*([a-z]+)\*\*", page, re.M)
    assert helped and documented == helped, (documented, helped)
