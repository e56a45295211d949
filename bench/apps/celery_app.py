"""Celery: the bench tasks on kombu's Redis transport, results in Redis when asked for."""

from __future__ import annotations

from celery import Celery

from bench import counter, delay
from bench.apps import BACKEND_URL, BROKER_URL, QUEUE, RESULTS

app = Celery("bench", broker=BROKER_URL, backend=BACKEND_URL if RESULTS else None)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=not RESULTS,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop() -> None:
    counter.done()


@app.task(name="bench.latency")
def latency(sent: float) -> None:
    counter.started(sent)
    counter.done()


@app.task(name="bench.wait10")
def wait10() -> None:
    counter.enter()
    delay.call()  # one blocking call that waits 10 ms on a local server
    counter.leave()
    counter.done()


@app.task(name="bench.hold")
def hold() -> None:
    counter.enter()
    delay.call(b"h\n")  # waits delay.HOLD seconds: W7's memory phase
    counter.leave()
    counter.done()
