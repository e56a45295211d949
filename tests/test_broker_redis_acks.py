"""RedisBroker.ack_soon: acks held for the next fetch, and never for long.

Real Redis; every test uses its own key prefix and queue and deletes its keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import redis

from taskq.broker.base import Envelope
from taskq.broker.redis import RedisBroker
from taskq.errors import ConfigurationError
from tests.waiting import wait_until


def fill(broker: RedisBroker, queue: str, count: int) -> None:
    envelope = Envelope(b"{}", "application/json", headers={"id": "x"})
    broker.publish_many([(envelope, queue, None)] * count)


def inflight(raw: redis.Redis, broker: RedisBroker) -> int:
    return int(raw.hlen(broker._keys.inflight))


def test_held_acks_go_with_the_next_fetch(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, unique: str
) -> None:
    broker = make_broker(ack_delay=30)  # the flusher never fires within the test
    queue = f"q-{unique}"
    fill(broker, queue, 8)
    first = broker.fetch([queue], 4, 0)
    broker.ack_soon(first)
    assert inflight(raw, broker) == 4  # held, not sent
    with mock.patch.object(broker._client, "hdel", wraps=broker._client.hdel) as hdel:
        second = broker.fetch([queue], 4, 0)
    assert hdel.call_count == 0  # no round trip of their own
    assert sorted(t.decode() for t in raw.hkeys(broker._keys.inflight)) == sorted(
        d.tag for d in second
    )


def test_held_acks_are_sent_within_ack_delay(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, unique: str
) -> None:
    broker = make_broker(ack_delay=0.1)
    queue = f"q-{unique}"
    fill(broker, queue, 3)
    broker.ack_soon(broker.fetch([queue], 3, 0))
    held_at = time.monotonic()
    wait_until(lambda: inflight(raw, broker) == 0, timeout=5)
    assert time.monotonic() - held_at < 2.0


@pytest.mark.parametrize("how", ["close", "heartbeat", "requeue"])
def test_held_acks_are_sent_first_by(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, unique: str, how: str
) -> None:
    broker = make_broker(ack_delay=30)
    queue = f"q-{unique}"
    fill(broker, queue, 4)
    done, unstarted = broker.fetch([queue], 2, 0), broker.fetch([queue], 2, 0)
    broker.ack_soon(done)
    if how == "close":
        broker.close()
        assert inflight(raw, broker) == 2
    elif how == "heartbeat":
        broker.heartbeat()
        assert inflight(raw, broker) == 2
    else:
        broker.requeue(unstarted)
        assert inflight(raw, broker) == 0
        assert raw.llen(queue) == 2


def test_ack_delay_zero_acks_at_once(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, unique: str
) -> None:
    broker = make_broker(ack_delay=0)
    queue = f"q-{unique}"
    fill(broker, queue, 2)
    broker.ack_soon(broker.fetch([queue], 2, 0))
    assert inflight(raw, broker) == 0


def test_acks_of_a_failed_fetch_are_sent_again(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, unique: str
) -> None:
    broker = make_broker(ack_delay=30)
    queue = f"q-{unique}"
    fill(broker, queue, 4)
    broker.ack_soon(broker.fetch([queue], 2, 0))
    real = broker._fetcher._script

    def lost_reply(keys: Any, args: Any) -> Any:
        real(keys, args)
        raise redis.ConnectionError("reply lost (injected)")

    # With its own connection busy, the broker fetches through the pool and the script.
    assert broker._line.acquire()
    broker._fetcher._script = lost_reply  # type: ignore[assignment]
    with pytest.raises(Exception, match="reply lost"):
        broker.fetch([queue], 2, 0)
    broker._fetcher._script = real
    broker._line.release()
    assert len(broker._acks) == 2  # held again: the script may not have run
    again = broker.fetch([queue], 2, 0)  # answered from the lost call's leases
    assert len(again) == 2 and len(broker._acks) == 0
    assert sorted(t.decode() for t in raw.hkeys(broker._keys.inflight)) == sorted(
        d.tag for d in again
    )


def test_many_held_acks_are_sent_at_once(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, unique: str
) -> None:
    broker = make_broker(ack_delay=30)
    queue = f"q-{unique}"
    fill(broker, queue, 1000)
    deliveries = []
    while batch := broker.fetch([queue], 500, 0):
        deliveries += batch
    broker.ack_soon(deliveries)  # 1,000: the limit
    assert inflight(raw, broker) == 0


def test_ack_delay_must_not_be_negative(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="ack_delay"):
        RedisBroker(redis_url, consumer_id="c", options={"ack_delay": -1})
