"""The canvas as Celery's docs write it: calling a chain, group, chord or chunks sends
it; calling a plain signature runs the task here; ``~sig`` waits for the result."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from taskq import App, ConfigurationError, GroupResult, chain, chord, group, signature
from taskq.canvas import maybe_signature, subtask
from taskq.testing import running_worker
from tests.worker_support import redis_app


@pytest.fixture
def app(unique: str) -> Iterator[App]:
    app = redis_app(unique)

    @app.task(name="calls.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="calls.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    yield app
    app.close()


def test_calling_a_workflow_sends_it(app: App) -> None:
    add, tsum = app.tasks["calls.add"], app.tasks["calls.tsum"]
    with running_worker(app, concurrency=4):
        assert chain(add.s(1, 2), add.s(3))().get(timeout=10) == 6
        assert (add.s(1, 1) | add.s(10))().get(timeout=10) == 12
        assert chain(add.s(1), add.s(3))(100).get(timeout=10) == 104  # args go first
        members = group(add.s(i, i) for i in range(3))()
        assert isinstance(members, GroupResult)
        assert members.get(timeout=10) == [0, 2, 4]
        assert group(add.s(1), add.s(2))(10).get(timeout=10) == [11, 12]
        assert chord([add.s(i, i) for i in range(4)], tsum.s())().get(timeout=10) == 12
        assert chord(add.s(i, 1) for i in range(3))(tsum.s()).get(timeout=10) == 6
        assert add.chunks([(1, 1), (2, 2), (3, 3)], 2)().get(timeout=10) == [[2, 4], [6]]
        assert ~add.s(20, 22) == 42


def test_calling_a_signature_runs_it_here(app: App) -> None:
    add = app.tasks["calls.add"]
    assert add.s(2, 3)() == 5  # no worker: a local call, as in Celery
    assert add.s(2)(3) == 5
    assert signature("calls.add", (4, 4), app=app)() == 8
    assert add.s(1, 2).apply().get() == 3
    assert add.s(1, 2).type is add
    with pytest.raises(ConfigurationError, match="runs on workers, not in this process"):
        chain(add.s(1, 2), add.s(3)).apply()
    with pytest.raises(ConfigurationError, match=r"chord\(header\)\(body\)"):
        chord([add.s(1, 1)]).apply_async()


def test_the_rest_of_celerys_signature_surface(app: App) -> None:
    add = app.tasks["calls.add"]
    spread = group(add.s(1, 1), add.s(2, 2), add.s(3, 3)).skew(start=1, step=2, stop=4)
    assert [member.options["countdown"] for member in spread.tasks] == [1, 3, 4]
    errback = add.s(0, 0)
    sig = add.s(1).on_error(errback)
    assert sig.options["link_error"] == [errback]
    sig.set_immutable(True)
    assert sig.immutable and sig.clone((5,)).args == (1,)
    assert maybe_signature(None) is None
    assert maybe_signature(dict(add.s(1, 1)), app=app) == add.s(1, 1)
    assert subtask is signature


def test_calling_a_signature_of_an_unknown_task_says_so(app: App) -> None:
    sig: Any = signature("elsewhere.task", app=app)
    with pytest.raises(Exception, match="'elsewhere.task' is not registered"):
        sig()
