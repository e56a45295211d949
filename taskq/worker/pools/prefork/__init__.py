"""The prefork pool: tasks run in child processes (billiard), supervised by the worker."""

from taskq.worker.pools.prefork.pool import PreforkPool

__all__ = ["PreforkPool"]
