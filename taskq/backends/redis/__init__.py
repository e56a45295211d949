"""The Redis result backend (``backend``) and the one pub/sub connection its
waiters share (``listen``)."""

from taskq.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
