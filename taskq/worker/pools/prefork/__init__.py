"""The prefork pool: tasks run in child processes (billiard), supervised by the worker.

On Redis each child consumes on its own (``consuming``, ``member``, ``board``);
on other brokers the parent dispatches to them (``pool``, ``children``, ``child``,
``queue``). ``taskq.worker.pools.make_pool`` picks one by the broker URL.
"""

from taskq.worker.pools.prefork.pool import PreforkPool

__all__ = ["PreforkPool"]
