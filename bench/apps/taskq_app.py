"""taskq: the bench tasks on the Redis broker, results in Redis when asked for."""

from __future__ import annotations

import asyncio
import os

from bench import counter, delay
from bench.apps import BACKEND_URL, BROKER_URL, QUEUE, RESULTS
from taskq import App

app = App(
    "bench",
    broker=BROKER_URL,
    # BENCH_RESULT_BACKEND: another result backend (e.g. db+postgresql://...) for a
    # run by hand; bench/run always stores results in its Redis.
    backend=(os.environ.get("BENCH_RESULT_BACKEND") or BACKEND_URL) if RESULTS else None,
    task_default_queue=QUEUE,
    task_ignore_result=not RESULTS,
    broker_transport_options={"key_prefix": "taskq:"} if BROKER_URL.startswith("redis") else {},
)


@app.task
def noop() -> None:
    counter.done()


@app.task
def latency(sent: float) -> None:
    counter.started(sent)
    counter.done()


@app.task
async def sleepy() -> None:
    await asyncio.sleep(0.01)
    counter.done()


@app.task
def wait10() -> None:
    counter.enter()
    delay.call()  # one blocking call that waits 10 ms on a local server
    counter.leave()
    counter.done()


@app.task
async def await10() -> None:
    counter.enter()
    await delay.acall()  # the same wait, with await
    counter.leave()
    counter.done()


@app.task
def hold() -> None:
    counter.enter()
    delay.call(b"h\n")  # waits delay.HOLD seconds: W7's memory phase
    counter.leave()
    counter.done()


@app.task
async def ahold() -> None:
    counter.enter()
    await delay.acall(b"h\n")
    counter.leave()
    counter.done()
