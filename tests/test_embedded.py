"""The embedded default does not depend on the working directory (issue 11, point 6).

Its SQLite file sits beside the module that creates the App, so a worker and a
producer importing the same app module share it wherever each was started;
``TASKQ_EMBEDDED_PATH`` / ``embedded_path`` move it; the banner and a ``get()``
timeout name the absolute path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import proc

pytestmark = pytest.mark.slow  # subprocesses, workers or servers: the full tier

PROJ = """
from taskq import App


app = App("proj"{settings})

@app.task
def add(x, y):
    return x + y
"""


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """The app's folder and two unrelated working directories."""
    folders = {name: tmp_path / name for name in ("app", "here", "there")}
    for folder in folders.values():
        folder.mkdir()
    (folders["app"] / "proj.py").write_text(PROJ.replace("{settings}", ""))
    return folders


def python(cwd: Path, environ: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_worker_and_producer_in_different_folders_share_one_file(
    layout: dict[str, Path],
) -> None:
    environ = proc.env({"PYTHONPATH": str(layout["app"])})
    expected = layout["app"] / "taskq.sqlite3"
    with proc.worker(layout["here"], environ, "-P", "threads", "-c", "2") as worker:
        assert f"sqlite (file {expected})" in worker.output
        sent = python(
            layout["there"], environ, "from proj import add; print(add.delay(2, 3).get(timeout=20))"
        )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == "5"
    assert expected.exists()
    assert not list(layout["here"].glob("*.sqlite3")) and not list(
        layout["there"].glob("*.sqlite3")
    )


def test_a_get_timeout_on_the_default_names_the_absolute_path(layout: dict[str, Path]) -> None:
    environ = proc.env({"PYTHONPATH": str(layout["app"])})
    code = (
        "from proj import add\n"
        "try:\n"
        "    add.delay(1, 2).get(timeout=0.3)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = python(layout["there"], environ, code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("TimeoutError task ")
    assert f"SQLite file {layout['app'] / 'taskq.sqlite3'}." in out.stdout
    assert "Is a worker running with this same file?" in out.stdout


def test_the_environment_variable_moves_the_file(layout: dict[str, Path], tmp_path: Path) -> None:
    moved = tmp_path / "shared" / "queue.sqlite3"
    moved.parent.mkdir()
    environ = proc.env({"PYTHONPATH": str(layout["app"]), "TASKQ_EMBEDDED_PATH": str(moved)})
    with proc.worker(layout["here"], environ, "-P", "threads") as worker:
        assert f"sqlite (file {moved})" in worker.output
        sent = python(
            layout["there"], environ, "from proj import add; print(add.delay(4, 5).get(timeout=20))"
        )
    assert sent.stdout.strip() == "9", sent.stderr
    assert moved.exists() and not (layout["app"] / "taskq.sqlite3").exists()


def test_a_relative_setting_is_relative_to_the_app_module(tmp_path: Path) -> None:
    (tmp_path / "proj.py").write_text(PROJ.replace("{settings}", ', embedded_path="data/q.db"'))
    environ = proc.env({"PYTHONPATH": str(tmp_path)})
    out = python(Path("/"), environ, "from proj import app; print(app.broker_url, app.backend_url)")
    expected = f"sqlite:///{tmp_path / 'data' / 'q.db'}"
    assert out.stdout.split() == [expected, expected], out.stderr
