"""Docs stay true: every setting is documented, and every documented setting exists."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from taskq.config import Settings

DOCS = Path(__file__).parent.parent / "docs"


def test_every_setting_is_documented_and_no_other() -> None:
    text = (DOCS / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.M))
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert documented == fields
