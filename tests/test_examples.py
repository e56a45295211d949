"""The framework examples run as their users run them: the Django project's own
tests under Django's test runner, the Django project with a ``taskq worker`` from
the CLI (autodiscovery, shared tasks, delay_on_commit), and the FastAPI app's
endpoints with a worker, all against the local Redis."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import proc, servers
from tests.waiting import wait_until

pytestmark = pytest.mark.slow  # real workers in subprocesses

EXAMPLES = Path(__file__).parent.parent / "examples"
REPO = EXAMPLES.parent


def example_env(unique: str, **extra: str) -> dict[str, str]:
    return proc.env(
        {
            "PYTHONPATH": str(REPO),
            "CELERY_BROKER_URL": servers.REDIS_URL,
            "CELERY_RESULT_BACKEND": servers.REDIS_URL,
            "CELERY_TASK_DEFAULT_QUEUE": f"examples-{unique}",
            **extra,
        }
    )


def manage(env: dict[str, str], *args: str, timeout: float = 90.0) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLES / "django_project",
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def test_django_project_tests_pass_under_djangos_runner(unique: str) -> None:
    servers.require("redis")
    out = manage(example_env(unique), "test", "reports", "-v", "2")
    assert "Ran 3 tests" in out and "\nOK" in out, out
    assert "test_the_view_counts_words_after_the_commit" in out


def test_django_project_with_a_worker_from_the_cli(unique: str, tmp_path: Path) -> None:
    servers.require("redis")
    env = example_env(unique, EXAMPLE_DB=str(tmp_path / "db.sqlite3"))
    manage(env, "migrate", "-v", "0")
    cwd = EXAMPLES / "django_project"
    with proc.worker(cwd, env, "-P", "threads", "-c", "2") as worker:
        # Found by app.autodiscover_tasks() in the installed app's tasks.py.
        assert "reports.tasks.count_words" in worker.output
        script = (
            "import json, time\n"
            "from django.test import Client\n"
            "c = Client()\n"
            "r = c.post('/reports/', {'text': 'a b c d'}, content_type='application/json')\n"
            "url = f\"/reports/{r.json()['id']}/\"\n"
            "deadline = time.monotonic() + 20\n"
            "while c.get(url).json()['status'] != 'done' and time.monotonic() < deadline:\n"
            "    time.sleep(0.05)\n"
            "print('REPORT', json.dumps(c.get(url).json()))\n"
        )
        out = manage(env, "shell", "-c", script)
    assert 'REPORT {"id": 1, "status": "done", "words": 4}' in out, out
    assert "Task reports.tasks.count_words[" in worker.output


@pytest.fixture
def fastapi_app(unique: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The example's ``main`` module, imported as uvicorn would (from its directory)."""
    servers.require("redis")
    monkeypatch.setenv("BROKER_URL", servers.REDIS_URL)
    monkeypatch.setenv("RESULT_BACKEND", servers.REDIS_URL)
    monkeypatch.setenv("TASK_QUEUE", f"examples-{unique}")
    monkeypatch.syspath_prepend(str(EXAMPLES / "fastapi_app"))
    for name in ("main", "tasks"):
        sys.modules.pop(name, None)
    main = importlib.import_module("main")
    yield main
    main.app.close()
    for name in ("main", "tasks"):
        sys.modules.pop(name, None)


def test_fastapi_app_hands_work_to_a_worker(fastapi_app: Any, unique: str) -> None:
    from fastapi.testclient import TestClient

    client = TestClient(fastapi_app.api)
    env = proc.env(
        {
            "PYTHONPATH": str(REPO),
            "BROKER_URL": servers.REDIS_URL,
            "RESULT_BACKEND": servers.REDIS_URL,
            "TASK_QUEUE": f"examples-{unique}",
        }
    )
    worker = proc.Proc(
        [*proc.TASKQ, "-A", "tasks", "worker", "-P", "threads", "-l", "info"],
        EXAMPLES / "fastapi_app",
        env,
    )
    try:
        worker.wait_for("ready.")
        sent = client.post("/images/7/resize", json={"width": 800})
        assert sent.status_code == 202
        task_id = sent.json()["task_id"]
        status: dict[str, Any] = {}

        def done() -> bool:
            status.update(client.get(f"/tasks/{task_id}").json())
            return status["state"] == "SUCCESS"

        wait_until(done, 20, "the resize task to succeed")
        assert status["result"] == {"image_id": 7, "width": 800, "height": 600}
        failed = fastapi_app.app.tasks["tasks.fail"].delay("no such image")
        wait_until(lambda: failed.ready(), 20, "the failing task to finish")
        assert client.get(f"/tasks/{failed.id}").json() == {
            "task_id": failed.id,
            "state": "FAILURE",
            "error": "ValueError('no such image')",
        }
        assert client.post("/images/7/resize", json={"width": "wide"}).status_code == 422
    finally:
        worker.stop()
