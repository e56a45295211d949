"""Execution pools: where task code runs.

``solo`` runs each task in the consumer's thread, one at a time; ``threads`` up
to N at once on a thread pool; ``prefork`` in child processes; ``asyncio`` on one
event loop; ``gevent`` and ``eventlet`` in greenlets of a process patched first
(what they share is in ``green``). Each is one module (``prefork`` a package) implementing
``taskq.worker.pools.base.Pool``, so the worker does not care which it drives.
A pool is imported only when chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskq.worker.executor import Executor
    from taskq.worker.pools.base import Done, Pool, PoolSettings

__all__ = ["POOLS", "make_pool"]

#: The pools ``make_pool`` knows.
POOLS = ("prefork", "threads", "solo", "asyncio", "gevent", "eventlet")


def make_pool(name: str, settings: PoolSettings, executor: Executor, done: Done) -> Pool:
    """The pool called ``name`` (one of ``POOLS``).

    Raises:
        ValueError: an unknown name.
    """
    if name == "solo":
        from taskq.worker.pools.solo import SoloPool

        return SoloPool(executor, done)
    if name == "threads":
        from taskq.worker.pools.threads import ThreadPool

        return ThreadPool(settings.concurrency, executor, done)
    if name == "prefork":
        from taskq.worker.pools.prefork.consuming import ConsumingPool, consumes

        if consumes(executor.app):  # Redis: the children fetch and settle on their own
            return ConsumingPool(executor, done, settings)
        from taskq.worker.pools.prefork.pool import PreforkPool

        return PreforkPool(executor, done, settings)
    if name == "asyncio":
        from taskq.worker.pools.asyncio import AsyncioPool

        return AsyncioPool(settings.concurrency, executor, done)
    if name == "gevent":
        from taskq.worker.pools.gevent import GeventPool

        return GeventPool(settings.concurrency, executor, done)
    if name == "eventlet":
        from taskq.worker.pools.eventlet import EventletPool

        return EventletPool(settings.concurrency, executor, done)
    raise ValueError(f"Unknown pool {name!r}; choose one of {', '.join(POOLS)}.")
