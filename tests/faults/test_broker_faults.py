"""Faults inside one fetch, injected at the Redis broker's boundary (private redis-server).

A fetch is a Lua script that moves messages from the queue lists into this
consumer's in-flight hash. If its reply never reaches the client, or the client
library re-sends it after a timeout (redis-py retries once on a connection or
timeout error), the script runs but the worker never hears what it leased.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from taskq.broker.base import Envelope
from taskq.broker.redis import RedisBroker
from taskq.errors import BrokerError
from tests.faults.cluster import ROOT
from tests.faults.redis_server import PrivateRedis

Q = "q"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    private = PrivateRedis(tmp_path / "redis")
    private.start()
    yield private
    private.stop()


def envelope(n: int) -> Envelope:
    return Envelope(body=b"%d" % n, content_type="text/plain", headers={"id": str(n)})


def ids(deliveries: list[Any]) -> list[str]:
    return [d.envelope.headers["id"] for d in deliveries]


def publish(broker: RedisBroker, count: int) -> None:
    for n in range(count):
        broker.publish(envelope(n), Q)


def inflight(server: PrivateRedis) -> int:
    client = server.client()
    try:
        return sum(int(client.hlen(key)) for key in client.scan_iter("taskq:inflight:*"))
    finally:
        client.close()


def misbehave(broker: RedisBroker, fault: str) -> None:
    """Make the broker's next fetch script call misbehave once. The broker's own
    connection is kept busy so that fetches take the pooled path, through the script
    object (faults on the broker's own connection: test_a_lost_read_ahead_...)."""
    assert broker._line.acquire()
    broker._fetcher._script = Script(broker._fetcher._script, fault)  # type: ignore[assignment]


class Script:
    """Stands in for the broker's registered fetch script and misbehaves once."""

    def __init__(self, real: Any, fault: str) -> None:
        self.real, self.fault, self.sha = real, fault, real.sha

    def __call__(self, keys: Any, args: Any) -> Any:
        fault, self.fault = self.fault, ""
        reply = self.real(keys, args)
        if fault == "lost reply":
            raise redis.ConnectionError("Connection reset by peer (injected after the script ran)")
        if fault == "ran twice":
            reply = self.real(keys, args)  # what redis-py's Retry does after a read timeout
        return reply


@pytest.mark.timeout(30)
def test_a_lost_fetch_reply_is_recovered_by_the_next_fetch(server: PrivateRedis) -> None:
    broker = RedisBroker(server.url, consumer_id="c", options={"lease_timeout": 60})
    publish(broker, 3)
    misbehave(broker, "lost reply")
    with pytest.raises(BrokerError, match="unreachable"):
        broker.fetch([Q], 10, 0.1)
    assert inflight(server) == 3  # leased to this live consumer, which does not know it

    got = broker.fetch([Q], 10, 0.1)
    assert ids(got) == ["0", "1", "2"]
    broker.ack(got)
    assert inflight(server) == 0
    assert broker.fetch([Q], 10, 0.1) == []
    broker.close()


@pytest.mark.timeout(30)
def test_a_fetch_script_run_twice_loses_nothing(server: PrivateRedis) -> None:
    broker = RedisBroker(server.url, consumer_id="c", options={"lease_timeout": 60})
    publish(broker, 10)
    misbehave(broker, "ran twice")
    seen: list[str] = []
    for _ in range(5):
        got = broker.fetch([Q], 5, 0.1)
        seen += ids(got)
        broker.ack(got)
    assert sorted(seen, key=int) == [str(n) for n in range(10)]
    assert inflight(server) == 0
    broker.close()


@pytest.mark.timeout(30)
def test_a_crash_between_fetch_and_bookkeeping_loses_nothing(server: PrivateRedis) -> None:
    """The process dies right after the fetch script returned (the test hook in
    tests.faults.crash_after_fetch); the messages it leased come back once its lease
    runs out."""
    code = textwrap.dedent(f"""
        from tests.faults import crash_after_fetch
        crash_after_fetch.install()
        from taskq.broker.redis import RedisBroker
        broker = RedisBroker({server.url!r}, consumer_id="doomed", options={{"lease_timeout": 1}})
        broker.fetch(["{Q}"], 10, 1.0)
        print("survived")
    """)
    broker = RedisBroker(server.url, consumer_id="rescuer", options={"lease_timeout": 1})
    publish(broker, 4)
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 70, out
    assert "survived" not in out.stdout
    assert inflight(server) == 4
    deadline = time.monotonic() + 10
    seen: list[str] = []
    while len(seen) < 4 and time.monotonic() < deadline:
        broker.heartbeat()
        got = broker.fetch([Q], 10, 0.2)
        seen += ids(got)
        broker.ack(got)
    assert sorted(seen) == ["0", "1", "2", "3"]
    broker.close()


@pytest.mark.timeout(30)
def test_settling_while_redis_is_down_is_done_by_the_next_heartbeat(tmp_path: Path) -> None:
    """A live consumer's lease never runs out, so an ack or requeue lost to an outage
    would leave its messages leased until the worker stops: it is retried instead."""
    server = PrivateRedis(tmp_path / "durable", durable=True)
    server.start()
    broker = RedisBroker(server.url, consumer_id="c", options={"lease_timeout": 60})
    try:
        publish(broker, 4)
        acked, requeued = broker.fetch([Q], 2, 0.1), broker.fetch([Q], 2, 0.1)
        server.kill()
        broker.ack(acked)  # deferred, not raised: the worker cannot do better
        broker.requeue(requeued)
        with pytest.raises(BrokerError, match="unreachable"):
            broker.heartbeat()
        server.start()  # replays the append-only file: both still leased
        assert inflight(server) == 4
        broker.heartbeat()
        assert inflight(server) == 0
        assert ids(broker.fetch([Q], 10, 0.1)) == ids(requeued)
    finally:
        broker.close()
        server.stop()
