"""The documentation site builds with ``mkdocs build --strict`` (issue 11, point 10):
a broken link or anchor, or a page left out of the navigation, fails the build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses, workers or servers: the full tier


ROOT = Path(__file__).resolve().parent.parent


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    site = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        # Material prints a notice about its successor on every build; it is not ours.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "WARNING" not in out.stderr, out.stderr
    pages = {path.stem for path in (ROOT / "docs").glob("*.md")}
    for page in pages - {"index"}:
        assert (site / page / "index.html").exists(), page
    assert "taskq" in (site / "index.html").read_text()
