"""Task registration, options, eager mode and signatures (no broker needed)."""

from __future__ import annotations

from typing import Any

import pytest

from taskq import App, ConfigurationError, MaxRetriesExceededError, states


@pytest.fixture
def app() -> App:
    return App("proj", broker="memory://", backend="memory://", task_always_eager=True)


def test_default_name_is_module_and_function(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.name == "tests.test_tasks.add"
    assert app.tasks[add.name] is add
    assert add(2, 3) == 5


def test_options_are_task_attributes(app: App) -> None:
    @app.task(name="custom", queue="q", max_retries=7, rate_limit="10/s", acks_late=False)
    def f() -> None: ...

    assert (f.name, f.queue, f.max_retries, f.rate_limit, f.acks_late) == (
        "custom",
        "q",
        7,
        "10/s",
        False,
    )


def test_eager_delay_returns_the_value(app: App) -> None:
    @app.task
    def mul(x: int, y: int) -> int:
        return x * y

    result = mul.delay(6, 7)
    assert result.get() == 42
    assert result.state == states.SUCCESS


def test_eager_retries_run_again_until_max(app: App) -> None:
    calls: list[int] = []

    @app.task(bind=True, max_retries=2)
    def always(self: Any) -> None:
        calls.append(self.request.retries)
        raise self.retry(countdown=10)

    result = always.delay()
    assert calls == [0, 1, 2]
    with pytest.raises(MaxRetriesExceededError, match="max_retries=2"):
        result.get()


def test_autoretry_for_with_backoff(app: App) -> None:
    calls: list[int] = []

    @app.task(
        bind=True,
        autoretry_for=(ConnectionError,),
        retry_backoff=True,
        retry_jitter=False,
        max_retries=3,
    )
    def fetch(self: Any) -> str:
        calls.append(self.request.retries)
        if len(calls) < 3:
            raise ConnectionError("flaky network")
        return "ok"

    assert fetch.delay().get() == "ok"
    assert calls == [0, 1, 2]
    assert [fetch.backoff_delay(n) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]


def test_eager_propagates_when_asked() -> None:
    app = App(
        "p",
        broker="memory://",
        backend="memory://",
        task_always_eager=True,
        task_eager_propagates=True,
    )

    @app.task
    def boom() -> None:
        raise RuntimeError("bang")

    with pytest.raises(RuntimeError, match="bang"):
        boom.delay()


def test_options_never_mix_with_arguments(app: App) -> None:
    app.conf.task_always_eager = False

    @app.task
    def f(countdown: int) -> int:
        return countdown

    with pytest.raises(ConfigurationError, match="Did you mean 'countdown'"):
        f.apply_async((1,), countdwon=5)


def test_signature_is_json_data_and_prepends_partial_args(app: App) -> None:
    @app.task
    def sub(x: int, y: int) -> int:
        return x - y

    sig = sub.s(1).set(queue="q")
    assert dict(sig) == {
        "task": "tests.test_tasks.sub",
        "args": [1],
        "kwargs": {},
        "options": {"queue": "q"},
        "subtask_type": None,
        "immutable": False,
    }
    assert sig.delay(10).get() == 9  # 10 is prepended: sub(10, 1)
    assert sub.si(5, 2).delay(100).get() == 3  # immutable: 100 is ignored


def test_link_callback_gets_the_result(app: App) -> None:
    seen: list[int] = []

    @app.task
    def double(x: int) -> int:
        return x * 2

    @app.task
    def collect(x: int) -> None:
        seen.append(x)

    double.apply_async((4,), link=collect.s())
    assert seen == [8]


def test_async_def_task_runs_to_completion(app: App) -> None:
    import asyncio

    @app.task
    async def slow_add(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x + y

    assert slow_add.delay(1, 2).get() == 3
