"""What a RedisBroker holds in Redis, found from Redis itself.

Tests look at a broker's keys the way an operator would, never inside the broker:
its connections are named ``taskq:<lease id>`` (``CLIENT LIST``), and its key
names follow from the lease id and ``key_prefix`` (``taskq.broker.redis.options.Keys``,
the layout in ``taskq.broker.redis.scripts``).
"""

from __future__ import annotations

import redis

from taskq.broker.redis import RedisBroker
from taskq.broker.redis.options import Keys


def connections(raw: redis.Redis, broker: RedisBroker) -> list[dict[str, str]]:
    """``CLIENT LIST`` entries of the broker's open connections."""
    prefix = f"taskq:{broker.consumer_id}."
    return [c for c in raw.client_list() if c["name"].startswith(prefix)]


def lease_id(raw: redis.Redis, broker: RedisBroker) -> str:
    """The broker's lease id, from the names of its connections. It must have used
    Redis already, and be the only open broker with its consumer id."""
    ids = {c["name"].removeprefix("taskq:") for c in connections(raw, broker)}
    assert len(ids) == 1, f"expected one open broker {broker.consumer_id!r}, found {ids}"
    return ids.pop()


def keys(raw: redis.Redis, broker: RedisBroker) -> Keys:
    """The broker's own key names (see ``lease_id`` for when this works)."""
    return Keys.make(broker.settings.key_prefix, lease_id(raw, broker))


def leased(raw: redis.Redis, broker: RedisBroker) -> int:
    """How many messages the broker has leased: the size of its in-flight hash."""
    return int(raw.hlen(keys(raw, broker).inflight))
