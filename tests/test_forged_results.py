"""Issue 12, item 2: a forged result never imports a module or raises what it should not.

Each test writes the result an attacker with write access to the backend would
write (raw, as JSON under Celery's key) and reads it the way an application does.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskq import App
from taskq.errors import TaskError
from taskq.result import exception_from_dict


@pytest.fixture
def app(redis_url: str, unique: str) -> Iterator[App]:
    app = App("forged", broker="memory://", backend=redis_url)
    yield app
    app.close()


def forge(redis_url: str, task_id: str, result: object, traceback: str | None = None) -> None:
    meta = {"status": "FAILURE", "result": result, "traceback": traceback, "task_id": task_id}
    client = redis.Redis.from_url(redis_url)
    client.set(f"celery-task-meta-{task_id}", json.dumps(meta), ex=60)
    client.close()


def test_a_forged_exc_module_is_not_imported(
    app: App, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module on sys.path whose import would run code: it writes a file.
    marker = tmp_path / "ran"
    name = f"planted_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\nclass Boom(Exception):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    task_id = uuid.uuid4().hex
    forge(redis_url, task_id, {"exc_type": "Boom", "exc_message": ["x"], "exc_module": name})
    with pytest.raises(TaskError) as raised:
        app.AsyncResult(task_id).get(timeout=5)
    assert not marker.exists(), "reading a result imported a module named by the result"
    assert name not in sys.modules
    assert (raised.value.exc_type, raised.value.exc_module) == ("Boom", name)
    assert str(raised.value) == f"{name}.Boom: x"


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt", "GeneratorExit"])
def test_base_exceptions_come_back_as_task_errors(app: App, redis_url: str, kind: str) -> None:
    task_id = uuid.uuid4().hex
    tb = "Traceback (most recent call last):\n  ...\nSystemExit: 3\n"
    forge(redis_url, task_id, {"exc_type": kind, "exc_message": [3], "exc_module": "builtins"}, tb)
    try:
        app.AsyncResult(task_id).get(timeout=5)
    except Exception as exc:  # what a caller that catches Exception has
        assert isinstance(exc, TaskError)
        assert (exc.exc_type, exc.exc_args, exc.traceback) == (kind, (3,), tb)
    else:
        raise AssertionError("get() of a FAILURE returned")
    assert isinstance(app.AsyncResult(task_id).result, TaskError)


def test_a_class_whose_constructor_fails_comes_back_as_a_task_error() -> None:
    # CalledProcessError needs two arguments; a forged result gives one.
    import subprocess  # noqa: F401 - loaded, so the class is found

    data = {"exc_type": "CalledProcessError", "exc_message": ["x"], "exc_module": "subprocess"}
    rebuilt = exception_from_dict(data, "the traceback")
    assert isinstance(rebuilt, TaskError) and rebuilt.traceback == "the traceback"
    assert str(rebuilt) == "subprocess.CalledProcessError: x"


def test_loaded_exception_classes_are_rebuilt() -> None:
    assert (
        repr(exception_from_dict({"exc_type": "KeyError", "exc_message": ["k"]})) == "KeyError('k')"
    )
    rebuilt = exception_from_dict(
        {"exc_type": "TaskRevokedError", "exc_message": ["gone"], "exc_module": "taskq.errors"}
    )
    assert type(rebuilt).__name__ == "TaskRevokedError" and str(rebuilt) == "gone"


@pytest.mark.parametrize(
    "data",
    [
        {"exc_type": "path", "exc_message": [], "exc_module": "os"},  # not a class
        {"exc_type": "object", "exc_message": [], "exc_module": "builtins"},  # not an exception
        {"exc_type": "a.b.c", "exc_message": [], "exc_module": "json"},  # no such attribute
        "not even a dict",
    ],
)
def test_anything_else_is_a_task_error(data: object) -> None:
    assert isinstance(exception_from_dict(data), TaskError)
