"""Microbenchmark of ``delay()``: microseconds a call on Redis and without a broker.

Usage: .venv/bin/python bench/delay_micro.py [--url redis://127.0.0.1:6379/0]
       [--calls 5000] [--repeats 15]

Prints figures; not a test. "redis" times ``add.delay(1, 2)`` publishing to a
unique queue (deleted afterwards); "prepare" times building and encoding the same
call without publishing (``app.producer.prepare``, what every delay() does first), so
the cost of the argument check (issue 11) shows against its own baseline;
"typing=False" rows skip the check, and the last row times the check alone. Each
row is the best of ``--repeats`` rounds of ``--calls`` calls, the rows interleaved.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable

import redis

from taskq import App
from taskq.task import TaskOptions


def best_of(calls: int, repeats: int, cases: dict[str, Callable[[], object]]) -> dict[str, float]:
    """The best microseconds per call of each case over ``repeats`` rounds of ``calls``
    calls, the cases interleaved round by round so that a busy moment of a shared
    machine hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, once in cases.items():
            started = time.perf_counter()
            for _ in range(calls):
                once()
            times[name].append((time.perf_counter() - started) / calls * 1e6)
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=15)
    options = parser.parse_args()
    queue = f"bench-delay-{uuid.uuid4().hex[:10]}"
    app = App("bench", broker=options.url, task_default_queue=queue, task_ignore_result=True)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    tasks = {"": add}
    if "typing" in TaskOptions.field_names():  # the option issue 11 adds

        @app.task(typing=False)
        def add_unchecked(x: int, y: int) -> int:
            return x + y

        tasks[", typing=False"] = add_unchecked
    cases: dict[str, Callable[[], object]] = {}
    for label, task in tasks.items():
        cases[f"prepare{label}"] = lambda task=task: app.producer.prepare(
            task.name, (1, 2), None, {}, task=task
        )
        cases[f"delay() on Redis{label}"] = lambda task=task: task.delay(1, 2)
    if hasattr(add, "check_arguments"):
        cases["the argument check alone"] = lambda: add.check_arguments((1, 2), None)
    try:
        add.delay(1, 2)  # connect and load scripts outside the timing
        rows = best_of(options.calls, options.repeats, cases)
    finally:
        app.close()
        client = redis.Redis.from_url(options.url)
        client.delete(queue)
        client.close()
    for name, micros in rows.items():
        print(f"{name:32} {micros:7.2f} us/call  ({1e6 / micros:,.0f} calls/s)")


if __name__ == "__main__":
    main()
