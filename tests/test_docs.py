"""Docs stay true: every setting is documented, and every documented setting exists;
the install instructions name every dependency the package declares; a LICENSE
matches pyproject's licence."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from taskq.config import Settings

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"


def test_every_setting_is_documented_and_no_other() -> None:
    text = (DOCS / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.M))
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert documented == fields


def project() -> dict[str, object]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    loaded: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return loaded


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else None]


def test_the_install_docs_name_every_dependency_and_extra() -> None:
    meta = project()
    names = [re.split(r"[<>=!~ ;\[]", dep, maxsplit=1)[0] for dep in meta["dependencies"]]  # type: ignore[attr-defined]
    extras = [name for name in meta["optional-dependencies"] if name != "dev"]  # type: ignore[attr-defined]
    for doc, heading in (
        (DOCS / "getting-started.md", "## Install"),
        (ROOT / "README.md", "## Install"),
    ):
        text = section(doc.read_text(), heading)
        missing = [name for name in names + extras if name not in text]
        assert not missing, f"{doc.name} does not name {missing}"


def test_the_license_file_matches_pyproject() -> None:
    meta = project()
    assert meta["license"] == "BSD-3-Clause"
    assert (ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License")


def marked(text: str, name: str) -> list[str]:
    """The `names` between ``<!-- name -->`` and ``<!-- /name -->``."""
    block = text.split(f"<!-- {name} -->", 1)[1].split(f"<!-- /{name} -->", 1)[0]
    return re.findall(r"`([a-z_]+)`", block)


def test_the_celery_page_names_settings_as_they_are() -> None:
    text = (DOCS / "celery-users.md").read_text()
    fields = {f.name for f in dataclasses.fields(Settings)}
    celery, own = set(marked(text, "celery-settings")), set(marked(text, "taskq-settings"))
    assert celery | own == fields, "every setting is either Celery's or taskq's own"
    assert not celery & own
    missing = set(marked(text, "celery-settings-missing"))
    assert missing and not missing & fields, f"now implemented: {missing & fields}"


def test_the_celery_page_names_command_options_that_exist() -> None:
    from taskq.cli import main

    text = (DOCS / "celery-users.md").read_text()
    block = text.split("<!-- cli-options -->", 1)[1].split("<!-- /cli-options -->", 1)[0]
    rows = re.findall(r"^\| `([a-z]+)` \| (.+) \|$", block, flags=re.M)
    assert {command for command, _ in rows} == {"worker", "beat", "call", "purge"}
    for command, cell in rows:
        options = {opt for param in main.commands[command].params for opt in param.opts}
        named = set(re.findall(r"`(-[-a-zA-Z]+)`", cell))
        assert named and named <= options, f"{command}: {named - options}"
