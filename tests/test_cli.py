"""The ``taskq`` command, run as a user runs it, against each broker."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from taskq import __version__
from tests import proc, servers
from tests.waiting import wait_until

# Starts workers or subprocesses: the full tier only (scripts/test).
pytestmark = pytest.mark.slow

PROJ = """
from taskq import App


app = App("proj")

@app.task
def add(x, y):
    return x + y

@app.task(bind=True)
def whoami(self):
    return self.request.hostname
"""


@pytest.fixture
def project(tmp_path: Path, unique: str) -> Path:
    (tmp_path / "proj.py").write_text(PROJ)
    return tmp_path


def produce(cwd: Path, environ: dict[str, str], code: str) -> str:
    """Run producer code in a fresh interpreter (as another process would)."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_version() -> None:
    out = proc.run(Path.cwd(), proc.env(), "--version")
    assert out.returncode == 0 and __version__ in out.stdout


BROKERS = {
    "embedded": lambda unique: {},
    "redis": lambda unique: {
        "TASKQ_BROKER_URL": servers.REDIS_URL,
        "TASKQ_RESULT_BACKEND": servers.REDIS_URL,
    },
    "amqp": lambda unique: {
        "TASKQ_BROKER_URL": servers.AMQP_URL,
        "TASKQ_RESULT_BACKEND": servers.REDIS_URL,
    },
}


@pytest.mark.parametrize("broker", list(BROKERS))
def test_worker_and_producer_end_to_end(broker: str, project: Path, unique: str) -> None:
    if broker != "embedded":
        servers.require("redis")
    if broker == "amqp":
        servers.require("amqp")
    environ = proc.env(BROKERS[broker](unique))
    queue = f"cli-{unique}"
    with proc.worker(
        project, environ, "-P", "threads", "-c", "2", "-Q", queue, "-n", f"w-{unique}@%h"
    ) as w:
        assert "[tasks]" in w.output and "proj.add" in w.output
        value = produce(
            project,
            environ,
            f"""
            from proj import add
            print(add.apply_async((2, 3), queue={queue!r}).get(timeout=20))
        """,
        )
        assert value == "5"
        task_id = proc.run(
            project,
            environ,
            "-A",
            "proj",
            "call",
            "proj.add",
            "--args",
            "[20, 22]",
            "--queue",
            queue,
        ).stdout.strip()
        shown = proc.run(
            project, environ, "result", task_id, "--wait", "--timeout", "20", "-A", "proj"
        )
        assert shown.returncode == 0, shown.stderr
        meta = json.loads(shown.stdout)
        assert (meta["status"], meta["result"]) == ("SUCCESS", 42)
        assert meta["worker"].startswith(f"w-{unique}@")
    if broker == "embedded":
        assert "sqlite (file " in w.output and str(project / "taskq.sqlite3") in w.output


def test_app_spec_forms(project: Path) -> None:
    environ = proc.env()
    (project / "pkg").mkdir()
    (project / "pkg" / "__init__.py").write_text("")
    (project / "pkg" / "celery.py").write_text("from taskq import App\nmy_app = App('pkg')\n")
    for spec in ("proj", "proj:app", "pkg"):
        out = proc.run(project, environ, "-A", spec, "purge", "-f")
        assert out.returncode == 0, (spec, out.stderr)
        assert "Purged" in out.stdout


def test_import_error_stops_with_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import no_such_dependency\n")
    out = proc.run(tmp_path, proc.env(), "-A", "broken", "worker")
    assert out.returncode == 70
    assert "could not import 'broken'" in out.stderr
    assert "ModuleNotFoundError: No module named 'no_such_dependency'" in out.stderr


def test_no_app_in_module_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "empty.py").write_text("x = 1\n")
    out = proc.run(tmp_path, proc.env(), "-A", "empty", "worker")
    assert out.returncode == 2
    assert "No taskq App found in 'empty'" in out.stderr


def test_bad_json_arguments(project: Path) -> None:
    out = proc.run(project, proc.env(), "-A", "proj", "call", "proj.add", "--args", "[1,")
    assert out.returncode == 2
    assert "--args" in out.stderr and "not valid JSON" in out.stderr


def test_unreachable_broker_at_call_is_a_clear_error(project: Path) -> None:
    environ = proc.env({"TASKQ_BROKER_URL": "redis://127.0.0.1:1/0"})
    out = proc.run(project, environ, "-A", "proj", "call", "proj.add", "--args", "[1, 2]")
    assert out.returncode == 69
    assert "Could not publish task proj.add" in out.stderr


BEAT_PROJ = """
from pathlib import Path
from taskq import App

app = App("proj", beat_schedule={"tick": {"task": "proj.tick", "schedule": 0.5}})

@app.task
def tick():
    with open(Path(__file__).with_name("ticks.txt"), "a") as f:
        f.write("tick\\n")
"""


def test_worker_with_embedded_beat(tmp_path: Path) -> None:
    (tmp_path / "proj.py").write_text(BEAT_PROJ)
    ticks = tmp_path / "ticks.txt"
    with proc.worker(tmp_path, proc.env(), "-P", "threads", "-c", "1", "-B") as w:
        wait_until(lambda: ticks.exists() and ticks.read_text().count("tick") >= 2, 20, "two ticks")
        assert "Sending due task tick (proj.tick)" in w.output


def test_beat_sends_periodic_tasks_to_a_worker(tmp_path: Path) -> None:
    (tmp_path / "proj.py").write_text(BEAT_PROJ)
    environ = proc.env()
    ticks = tmp_path / "ticks.txt"
    with proc.worker(tmp_path, environ, "-P", "threads", "-c", "1"):
        beat = proc.Proc([*proc.TASKQ, "-A", "proj", "beat"], tmp_path, environ)
        try:
            beat.wait_for("Sending due task tick (proj.tick)")
            wait_until(
                lambda: ticks.exists() and ticks.read_text().count("tick") >= 3, 20, "three ticks"
            )
        finally:
            assert beat.stop() == 0, beat.output
