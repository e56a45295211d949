"""``expires``: a task not started by then is not run; its state is REVOKED
(issue 11, point 10). On every broker with a worker, as the user sees it through
the result."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from taskq import App, states
from taskq.errors import TaskRevokedError
from taskq.testing import running_worker
from tests.test_contract import make_app

pytestmark = pytest.mark.slow  # subprocesses, workers or servers: the full tier


@pytest.fixture(params=["redis", "amqp+redis", "sqlite"])
def app(request: pytest.FixtureRequest, unique: str, tmp_path: Path) -> Iterator[App]:
    app = make_app(request.param, unique, tmp_path)
    yield app
    app.close()


def test_an_expired_task_is_revoked_and_never_runs(app: App) -> None:
    ran: list[str] = []

    @app.task
    def record(label: str) -> str:
        ran.append(label)
        return label

    past = datetime.now(timezone.utc) - timedelta(seconds=5)
    expired = record.apply_async(("expired",), expires=past)
    # Due after its expiry: it waits in the broker's delayed store, then is dropped.
    late = record.apply_async(("late",), countdown=1, expires=0.5)
    fresh = record.apply_async(("fresh",), expires=60)
    with running_worker(app):
        assert fresh.get(timeout=20) == "fresh"
        for result in (expired, late):
            value = result.get(timeout=20, propagate=False)
            assert result.state == states.REVOKED
            assert isinstance(value, TaskRevokedError) and "expired" in str(value)
    assert ran == ["fresh"]


def test_the_task_option_is_the_default_and_a_call_overrides_it(app: App) -> None:
    @app.task(expires=0.001)
    def quick() -> str:
        return "ran"

    stale = quick.delay()  # already expired when a worker sees it (1 ms)
    kept = quick.apply_async(expires=60)
    with running_worker(app):
        assert kept.get(timeout=20) == "ran"
        stale.get(timeout=20, propagate=False)
    assert stale.state == states.REVOKED
