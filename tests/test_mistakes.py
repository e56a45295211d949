"""Mistakes are caught where they are made (issue 11, point 7).

A call that does not fit the task's signature raises ``TypeError`` naming the task
before anything is published (``typing=False`` turns the check off); an argument
the serializer refuses raises ``EncodeError`` naming the task and the argument;
``taskq call`` warns about a name the app does not know; a worker that receives
one says what to check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from taskq import App, EncodeError, NotRegistered
from taskq.arguments import checker
from taskq.testing import running_worker
from tests import proc


def queued(raw: redis.Redis, app: App) -> int:
    return int(raw.llen(app.conf.task_default_queue))


def test_wrong_arguments_raise_type_error_naming_the_task_and_send_nothing(
    app: App, raw: redis.Redis
) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    calls: list[Any] = [
        lambda: add.delay(1),  # type: ignore[call-arg]
        lambda: add.delay(1, 2, 3),  # type: ignore[call-arg]
        lambda: add.apply_async((1,), {"z": 2}),
        lambda: add.delay_many([(1, 2), (1,)]),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=r"Task '.*\.add' takes \(x, y\)"):
            call()
    assert queued(raw, app) == 0  # delay_many stops before sending the chunk it builds
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'y'"):
        add.delay(1)  # type: ignore[call-arg]


def test_typing_false_sends_without_checking(app: App, raw: redis.Redis) -> None:
    @app.task(typing=False)
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(1)  # type: ignore[call-arg]
    assert queued(raw, app) == 1


def test_a_bound_task_is_checked_without_its_self(app: App) -> None:
    @app.task(bind=True)
    def greet(self: Any, name: str, *, loud: bool = False) -> str:
        return name

    with pytest.raises(TypeError, match=r"takes \(name, \*, loud=False\)"):
        greet.delay()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="takes 1 positional argument but 2 were given"):
        greet.apply_async(("a", True))


@pytest.mark.parametrize(
    ("args", "kwargs", "fits"),
    [
        ((1,), {}, True),
        ((1, 2), {}, True),
        ((), {"a": 1}, False),  # a is positional-only
        ((1, 2, 3, 4), {"c": 5, "extra": 6}, True),
        ((1,), {"c": 5}, True),
        ((), {}, False),
    ],
)
def test_the_checker_follows_every_kind_of_parameter(
    args: tuple[Any, ...], kwargs: dict[str, Any], fits: bool
) -> None:
    def fn(a: int, /, b: int = 0, *rest: int, c: int = 1, **more: int) -> None:
        pass

    check = checker(fn, bound=False)
    assert check is not None
    try:
        check(*args, **kwargs)
    except TypeError:
        assert not fits
    else:
        assert fits


def test_a_function_without_a_signature_is_sent_unchecked(app: App, raw: redis.Redis) -> None:
    assert checker(max, bound=False) is None  # inspect finds no signature for max
    biggest = app.task(max, name="biggest")
    biggest.delay(1, 2, 3)
    assert queued(raw, app) == 1


def test_an_argument_json_cannot_encode_is_named(app: App, raw: redis.Redis) -> None:
    @app.task
    def store(key: str, value: Any = None) -> None:
        pass

    with pytest.raises(EncodeError, match=r"Task '.*\.store': args\[1\] = \{1, 2\} cannot be"):
        store.delay("k", {1, 2})
    with pytest.raises(EncodeError, match=r"kwargs\['value'\] = <object object at"):
        store.delay("k", value=object())
    assert queued(raw, app) == 0


PROJ = """
from taskq import App

app = App("proj")

@app.task
def add(x, y):
    return x + y
"""


@pytest.mark.slow
def test_taskq_call_warns_about_a_name_the_app_does_not_know(tmp_path: Path) -> None:
    (tmp_path / "proj.py").write_text(PROJ)
    out = proc.run(tmp_path, proc.env(), "-A", "proj", "call", "proj.ad", "--args", "[1, 2]")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip()) == 36  # still sent: another app's worker may know it
    assert "Warning: Task 'proj.ad' is not registered in app 'proj'." in out.stderr
    assert "Did you mean 'proj.add'?" in out.stderr
    known = proc.run(tmp_path, proc.env(), "-A", "proj", "call", "proj.add", "--args", "[1, 2]")
    assert known.returncode == 0 and known.stderr == ""


@pytest.mark.slow
def test_a_worker_says_what_to_check_for_an_unregistered_task(app: App) -> None:
    @app.task(name="workertests.add")
    def add(x: int, y: int) -> int:
        return x + y

    with running_worker(app):
        result = app.send_task("workertests.ad", (1, 2))
        with pytest.raises(NotRegistered) as caught:
            result.get(timeout=10)
    message = str(caught.value)
    assert message.startswith("Worker taskq@")
    assert "Task 'workertests.ad' is not registered in app 'workertests'." in message
    assert "Did you mean 'workertests.add'?" in message
    assert "the module defining it is imported by this process" in message
    assert "include=[...]" in message and "name= given to @app.task" in message
