"""Celery: the bench tasks on kombu's Redis transport, results in Redis when asked for."""

from __future__ import annotations

from celery import Celery

from bench import counter
from bench.apps import BROKER_URL, QUEUE, RESULTS

app = Celery("bench", broker=BROKER_URL, backend=BROKER_URL if RESULTS else None)
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
