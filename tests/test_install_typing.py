"""Typing works after the documented install (issue 11, point 4).

The venv is made the way scripts/quickstart (the README's command) makes it, from
a copy of the files git knows (a fresh clone), and mypy, run from a user's own
folder outside the repository, must check ``Task[P, R]``: a wrong argument type is
an error, a right call is not, and ``taskq`` is found with its types.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses, workers or servers: the full tier

ROOT = Path(__file__).resolve().parent.parent

USER_MODULE = """\
from taskq import App


app = App("user", broker="memory://")


@app.task
def add(x: int, y: int) -> int:
    return x + y


total: int = add.delay(1, 2).get()  # right: no error
add.delay("one", 2)  # wrong: mypy must flag this line
"""


def documented_install() -> list[str]:
    """The pip command scripts/quickstart runs, as argv for the venv's python."""
    lines = (ROOT / "scripts" / "quickstart").read_text().splitlines()
    (line,) = [line for line in lines if " -m pip install " in line]
    argv = shlex.split(line)
    assert argv[0] == ".venv/bin/python", line
    return argv[1:]


def fresh_clone(target: Path) -> Path:
    """The files git knows (tracked, and new ones not ignored), as a clone has them."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.mark.timeout(300)
def test_mypy_checks_task_types_after_the_documented_install(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    clone = fresh_clone(tmp_path / "clone")
    python = clone / ".venv" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", str(clone / ".venv")], check=True)
    install = subprocess.run(
        [str(python), *documented_install()], cwd=clone, capture_output=True, text=True
    )
    assert install.returncode == 0, install.stdout + install.stderr

    project = tmp_path / "project"  # the user's folder: no taskq source in reach
    project.mkdir()
    (project / "user.py").write_text(USER_MODULE)
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
        + ["--python-executable", str(python), "user.py"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    out = checked.stdout + checked.stderr
    assert "Cannot find implementation or library stub" not in out, out
    flagged = {int(n) for n in re.findall(r"^user\.py:(\d+): error", out, flags=re.M)}
    wrong = USER_MODULE.splitlines().index('add.delay("one", 2)  # wrong: mypy must flag this line')
    assert flagged == {wrong + 1}, out
    assert 'incompatible type "str"; expected "int"' in out, out
