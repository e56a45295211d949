"""The Redis broker: kombu's queue layout, per-consumer leases, batched Lua.

``broker`` is the ``Broker`` (its docstring has the design); ``fetch`` leases
messages, ``settle`` and ``acks`` acknowledge and give them back, ``dlq`` keeps
dead letters, ``scripts`` holds the Lua (``*.lua``), ``options`` the options and
key names. The connection itself is ``taskq.redisclient``.
"""

from taskq.broker.redis.broker import RedisBroker

__all__ = ["RedisBroker"]
