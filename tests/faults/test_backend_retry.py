"""``Backend.store`` retries a task's outcome while the result backend is down."""

from __future__ import annotations

from typing import Any

import pytest
import redis.exceptions as redis_errors

from taskq import App
from taskq.backends import base
from taskq.backends.base import StoreRetry
from taskq.backends.memory import MemoryBackend
from taskq.backends.redis import RedisBackend
from taskq.errors import BackendError, ConfigurationError


class Flaky(MemoryBackend):
    """Refuses the first ``failures`` writes, with ``cause`` behind the BackendError."""

    def __init__(self, failures: int, cause: Exception | None = None) -> None:
        super().__init__("memory://")
        self.failures, self.cause, self.writes = failures, cause, 0

    def set(self, key: str, value: bytes, expires: float | None) -> None:
        self.writes += 1
        if self.writes <= self.failures:
            raise BackendError("result backend unreachable (injected)") from self.cause
        super().set(key, value, expires)

    def recoverable(self, exc: BackendError) -> bool:
        return not isinstance(exc.__cause__, PermissionError)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(base.time, "sleep", slept.append)
    return slept


def test_delays_double_from_the_base_up_to_the_cap_with_half_of_each_random() -> None:
    policy = StoreRetry(max_retries=20, base_sleep=0.01, max_sleep=10.0)
    assert [policy.cap(n) for n in (0, 1, 2, 10, 30)] == [0.01, 0.02, 0.04, 10.0, 10.0]
    assert policy.delay(3, draw=lambda: 0.0) == pytest.approx(0.04)
    assert policy.delay(3, draw=lambda: 1.0) == pytest.approx(0.08)
    least, most = policy.budget()  # what docs/configuration.md promises
    assert (round(least), round(most)) == (55, 110)
    assert StoreRetry(enabled=False).budget() == (0.0, 0.0)


def test_a_ready_state_is_retried_until_the_backend_takes_it(sleeps: list[float]) -> None:
    backend = Flaky(failures=5)
    backend.store("t1", "SUCCESS", 42)
    assert backend.meta("t1")["result"] == 42
    assert len(sleeps) == 5 and sleeps == sorted(sleeps)


def test_retries_run_out_with_an_error_that_says_what_to_raise(sleeps: list[float]) -> None:
    backend = Flaky(failures=100)
    backend.store_retry = StoreRetry(max_retries=3)
    with pytest.raises(BackendError, match=r"after 3 retries.*result_backend_max_retries"):
        backend.store("t1", "FAILURE", {"exc_type": "ValueError"})
    assert len(sleeps) == 3


def test_what_retrying_cannot_fix_is_raised_at_once(sleeps: list[float]) -> None:
    with pytest.raises(BackendError):
        Flaky(failures=1, cause=PermissionError("denied")).store("t1", "SUCCESS", 1)
    disabled = Flaky(failures=1)
    disabled.store_retry = StoreRetry(enabled=False)
    with pytest.raises(BackendError):
        disabled.store("t1", "SUCCESS", 1)
    assert sleeps == []


def test_intermediate_states_are_tried_once(sleeps: list[float]) -> None:
    with pytest.raises(BackendError):
        Flaky(failures=1).store("t1", "STARTED", {"pid": 1})
    assert sleeps == []


def test_the_app_passes_the_settings_to_its_backend() -> None:
    app = App(
        "t",
        broker="memory://",
        backend="memory://",
        result_backend_always_retry=True,
        result_backend_max_retries=4,
        result_backend_base_sleep_between_retries_ms=100,
        result_backend_max_sleep_between_retries_ms=2000,
    )
    assert app.require_backend().store_retry == StoreRetry(True, 4, 0.1, 2.0)
    with pytest.raises(ConfigurationError, match="0 or more"):
        app.conf.result_backend_max_retries = -1


@pytest.mark.parametrize(
    ("cause", "retry"),
    [
        (redis_errors.ConnectionError("refused"), True),
        (redis_errors.BusyLoadingError("loading"), True),
        (redis_errors.TimeoutError("timed out"), True),
        (redis_errors.ReadOnlyError("replica"), True),
        (redis_errors.AuthenticationError("bad password"), False),
        (redis_errors.ResponseError("OOM command not allowed"), False),
    ],
)
def test_redis_backend_retries_outages_not_mistakes(cause: Exception, retry: bool) -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0")
    error: Any = BackendError("x")
    error.__cause__ = cause
    assert backend.recoverable(error) is retry
    backend.close()
