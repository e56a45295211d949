"""``Task[P, R]`` is checked by mypy: wrong arguments and result types are errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# Starts workers or subprocesses: the full tier only (scripts/test).
pytestmark = pytest.mark.slow


api = pytest.importorskip("mypy.api")

USAGE = Path(__file__).parent / "typing" / "usage.py"


def test_mypy_flags_exactly_the_marked_lines() -> None:
    stdout, _, _ = api.run(["--strict", "--no-incremental", "--follow-imports=silent", str(USAGE)])
    found = {int(m.group(1)) for m in re.finditer(r"usage\.py:(\d+): error", stdout)}
    lines = USAGE.read_text().splitlines()
    expected = {n for n, line in enumerate(lines, 1) if "# E:" in line}
    assert found == expected, stdout
