"""Huey: the bench tasks on RedisHuey (blocking BRPOP dequeue, its default)."""

from __future__ import annotations

from huey import RedisHuey

from bench import counter
from bench.apps import BROKER_URL, QUEUE, RESULTS

# store_none: huey keeps no result for a task returning None unless told to, and
# get() would then wait for its timeout.
huey = RedisHuey(QUEUE, url=BROKER_URL, results=RESULTS, store_none=RESULTS, utc=True)


@huey.task()
def noop() -> None:
    counter.done()


@huey.task()
def latency(sent: float) -> None:
    counter.started(sent)
    counter.done()
