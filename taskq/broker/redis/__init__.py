"""The Redis broker: kombu's queue layout, per-consumer leases, batched Lua.

``broker`` is the ``Broker`` (its docstring has the design); ``fetch`` leases
messages, ``settle`` and ``acks`` acknowledge and give them back, ``dlq`` keeps
dead letters, ``scripts`` holds the Lua (``*.lua``), ``options`` the options and
key names. ``session`` is what these parts of one broker share (connections, key
names, lease id, error reporting); each is handed it and none calls back into the
broker. The connection itself is ``taskq.redisclient``.
"""

from taskq.broker.redis.broker import RedisBroker

__all__ = ["RedisBroker"]
