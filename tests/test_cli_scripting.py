"""A CLI that scripts can rely on (issue 11, point 8).

``taskq result`` exits with a documented code per outcome and has ``--timeout``
for ``--wait``; ``taskq call`` takes ``--countdown``, ``--eta``, ``--expires``,
``--priority`` and ``--queue``; ``print()`` in a task reaches the worker's log
with the task's name and id. Run as a user runs them: ``taskq`` subprocesses on
the embedded default.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from taskq.cli import EX_TASK_FAILED, EX_TASK_REVOKED, EX_TEMPFAIL
from tests import proc

pytestmark = pytest.mark.slow  # subprocesses, workers or servers: the full tier

PROJ = """
from taskq import App


app = App("proj"{settings})

@app.task
def add(x, y):
    return x + y

@app.task
def boom():
    raise ValueError("boom")

@app.task(bind=True)
def describe(self):
    return {
        "queue": self.request.delivery_info["routing_key"],
        "priority": self.request.delivery_info["priority"],
        "eta": self.request.eta.isoformat() if self.request.eta else None,
        "expires": self.request.expires.isoformat() if self.request.expires else None,
    }

@app.task
def shout(word):
    print("loud", word)
    print("and partial", end="")
    print(" then done")
    return word
"""


def write_project(folder: Path, settings: str = "") -> Path:
    (folder / "proj.py").write_text(PROJ.replace("{settings}", settings))
    return folder


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path)


@pytest.fixture
def worker(project: Path) -> Iterator[proc.Proc]:
    with proc.worker(project, proc.env(), "-P", "threads", "-c", "2", "-Q", "celery,other") as w:
        yield w


def taskq(project: Path, *args: str) -> tuple[int, str, str]:
    out = proc.run(project, proc.env(), "-A", "proj", *args)
    return out.returncode, out.stdout, out.stderr


def call(project: Path, *args: str) -> str:
    code, out, err = taskq(project, "call", *args)
    assert code == 0, err
    return out.strip()


def test_result_exit_codes(project: Path, worker: proc.Proc) -> None:
    ok = call(project, "proj.add", "--args", "[2, 3]")
    code, out, err = taskq(project, "result", ok, "--wait", "--timeout", "20")
    assert code == 0, err
    assert json.loads(out)["status"] == "SUCCESS"

    failed = call(project, "proj.boom")
    code, out, _ = taskq(project, "result", failed, "--wait", "--timeout", "20")
    assert code == EX_TASK_FAILED == 3
    assert json.loads(out)["status"] == "FAILURE"

    past = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()
    expired = call(project, "proj.add", "--args", "[1, 1]", "--expires", past)
    code, out, _ = taskq(project, "result", expired, "--wait", "--timeout", "20")
    assert code == EX_TASK_REVOKED == 4
    assert json.loads(out)["status"] == "REVOKED"

    code, _, err = taskq(project, "result", "no-such-task", "--wait", "--timeout", "0.5")
    assert code == EX_TEMPFAIL == 75
    assert "not ready after 0.5s" in err

    code, out, _ = taskq(project, "result", "no-such-task")  # not waiting: its state
    assert code == 0 and json.loads(out)["status"] == "PENDING"


def test_timeout_needs_wait(project: Path) -> None:
    code, _, err = taskq(project, "result", "some-id", "--timeout", "3")
    assert code == 2 and "--timeout applies to --wait" in err


def test_call_options_reach_the_message(project: Path, worker: proc.Proc) -> None:
    sent = datetime.now(timezone.utc)
    task_id = call(
        project,
        "proj.describe",
        *("--queue", "other", "--priority", "7", "--countdown", "1.5", "--expires", "600"),
    )
    code, out, err = taskq(project, "result", task_id, "--wait", "--timeout", "20")
    assert code == 0, err
    meta = json.loads(out)
    seen = meta["result"]
    assert (seen["queue"], seen["priority"]) == ("other", 7)
    eta = datetime.fromisoformat(seen["eta"])
    assert sent + timedelta(seconds=1.4) <= eta <= sent + timedelta(seconds=10)
    assert datetime.fromisoformat(meta["date_done"]) >= eta
    expires = datetime.fromisoformat(seen["expires"])
    assert sent + timedelta(seconds=590) <= expires <= sent + timedelta(seconds=620)

    at = (datetime.now(timezone.utc) + timedelta(seconds=1)).replace(microsecond=0)
    task_id = call(project, "proj.describe", "--eta", at.isoformat())
    code, out, err = taskq(project, "result", task_id, "--wait", "--timeout", "20")
    assert code == 0, err
    assert datetime.fromisoformat(json.loads(out)["result"]["eta"]) == at


def test_call_refuses_a_bad_time_and_wrong_arguments(project: Path) -> None:
    code, _, err = taskq(project, "call", "proj.add", "--args", "[1, 2]", "--eta", "tomorrow")
    assert code == 2 and "'tomorrow' is not an ISO 8601 time" in err
    code, _, err = taskq(project, "call", "proj.add", "--args", "[1]")
    assert code == 2 and "missing 1 required positional argument: 'y'" in err


def test_print_in_a_task_reaches_the_log_with_its_name_and_id(
    project: Path, worker: proc.Proc
) -> None:
    task_id = call(project, "proj.shout", "--args", '["hey"]')
    line = worker.wait_for(f"proj.shout[{task_id}]: loud hey")
    assert "WARNING" in line
    worker.wait_for(f"proj.shout[{task_id}]: and partial then done")


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_print_is_logged_from_every_pool(tmp_path: Path, pool: str) -> None:
    project = write_project(tmp_path, ', worker_redirect_stdouts_level="INFO"')
    with proc.worker(project, proc.env(), "-P", pool, "-c", "1") as w:
        task_id = call(project, "proj.shout", "--args", '["there"]')
        line = w.wait_for(f"proj.shout[{task_id}]: loud there")
        assert "INFO" in line


def test_redirecting_can_be_turned_off(tmp_path: Path) -> None:
    project = write_project(tmp_path, ", worker_redirect_stdouts=False")
    with proc.worker(project, proc.env(), "-P", "solo") as w:
        task_id = call(project, "proj.shout", "--args", '["plain"]')
        w.wait_for("loud plain")
        w.wait_for(f"Task proj.shout[{task_id}] succeeded")
    assert f"proj.shout[{task_id}]: loud" not in w.output
