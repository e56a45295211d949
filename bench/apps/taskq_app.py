"""taskq: the bench tasks on the Redis broker, results in Redis when asked for."""

from __future__ import annotations

import asyncio

from bench import counter
from bench.apps import BROKER_URL, QUEUE, RESULTS
from taskq import App

app = App(
    "bench",
    broker=BROKER_URL,
    backend=BROKER_URL if RESULTS else None,
    task_default_queue=QUEUE,
    task_ignore_result=not RESULTS,
    broker_transport_options={"key_prefix": "taskq:"},
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
