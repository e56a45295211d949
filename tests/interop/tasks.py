"""The interop tasks, defined once for both Celery and taskq: ``define(app.task)``
registers them on either kind of app (the decorators take the same arguments)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.interop.errors import InteropError


def define(task: Callable[..., Any]) -> None:
    """Register the interop tasks with ``task`` (``app.task`` of Celery or taskq)."""

    @task(name="interop.add")
    def add(x: int, y: int) -> int:
        return x + y

    @task(name="interop.echo")
    def echo(*args: Any, **kwargs: Any) -> list[Any]:
        return [list(args), kwargs]

    @task(name="interop.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @task(name="interop.fail")
    def fail(message: str) -> None:
        raise InteropError(message)

    @task(name="interop.when")
    def when() -> float:
        """When it ran (unix time), to check a countdown or ETA was kept."""
        return time.time()

    @task(name="interop.sleep")
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @task(name="interop.where", bind=True)
    def where(self: Any) -> dict[str, Any]:
        """Which worker ran it, from which queue: to see a mixed fleet share work."""
        return {
            "hostname": self.request.hostname,
            "queue": self.request.delivery_info.get("routing_key"),
        }

    @task(name="interop.retry_once", bind=True, max_retries=3)
    def retry_once(self: Any) -> dict[str, Any]:
        """Retries once, then says which queue each attempt came from."""
        queue = self.request.delivery_info.get("routing_key")
        if self.request.retries == 0:
            raise self.retry(countdown=0.1)
        return {"retries": self.request.retries, "queue": queue}
