"""Faults inside one fetch, on a real connection (a private redis-server, a proxy).

A fetch is a Lua script that moves messages from the queue lists into this
consumer's in-flight hash. If its reply never reaches the client, or the client
library re-sends it after a timeout (redis-py retries once on a connection or
timeout error), the script runs but the worker never hears what it leased. The
proxy (``tests.faults.proxy``) between the broker and Redis makes both happen.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskq.broker.base import Envelope
from taskq.broker.redis import RedisBroker, scripts
from taskq.errors import BrokerError
from tests.faults.cluster import ROOT
from tests.faults.proxy import RedisProxy, script_call
from tests.faults.redis_server import PrivateRedis

Q = "q"
FETCH = script_call(scripts.FETCH)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    private = PrivateRedis(tmp_path / "redis")
    private.start()
    client = private.client()
    client.script_load(scripts.FETCH)  # so that each fetch is one call of it
    client.close()
    yield private
    private.stop()


@pytest.fixture
def proxy(server: PrivateRedis) -> Iterator[RedisProxy]:
    with RedisProxy(server.url) as proxy:
        yield proxy


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


@pytest.mark.timeout(30)
def test_a_lost_fetch_reply_is_recovered_by_the_next_fetch(
    server: PrivateRedis, proxy: RedisProxy
) -> None:
    broker = RedisBroker(proxy.url, consumer_id="c", options={"lease_timeout": 60})
    publish(broker, 3)
    # The reply of the call and of the broker's one re-send of it are lost.
    lost = proxy.fault("lose reply", FETCH, times=2)
    with pytest.raises(BrokerError, match="unreachable"):
        broker.fetch([Q], 10, 0.1)
    lost.wait()
    assert inflight(server) == 3  # leased to this live consumer, which does not know it

    got = broker.fetch([Q], 10, 0.1)
    assert ids(got) == ["0", "1", "2"]
    broker.ack(got)
    assert inflight(server) == 0
    assert broker.fetch([Q], 10, 0.1) == []
    broker.close()


@pytest.mark.timeout(30)
def test_a_fetch_script_run_twice_loses_nothing(server: PrivateRedis, proxy: RedisProxy) -> None:
    options = {"lease_timeout": 60, "socket_timeout": 0.5}
    broker = RedisBroker(proxy.url, consumer_id="c", options=options)
    publish(broker, 10)
    # Held past socket_timeout: the client re-sends the call and the script runs again.
    held = proxy.fault("hold reply", FETCH)
    seen: list[str] = []
    for _ in range(5):
        got = broker.fetch([Q], 5, 0.1)
        seen += ids(got)
        broker.ack(got)
    held.wait()
    assert sorted(seen, key=int) == [str(n) for n in range(10)]
    assert inflight(server) == 0
    broker.close()


@pytest.mark.timeout(30)
def test_a_crash_between_fetch_and_bookkeeping_loses_nothing(
    server: PrivateRedis, proxy: RedisProxy
) -> None:
    """The process is killed (SIGKILL) after its fetch script ran and before the
    reply reached it (the proxy holds the reply back); the messages it leased come
    back once its lease runs out."""
    code = textwrap.dedent(f"""
        from taskq.broker.redis import RedisBroker
        broker = RedisBroker({proxy.url!r}, consumer_id="doomed", options={{"lease_timeout": 1}})
        broker.fetch(["{Q}"], 10, 1.0)
        print("survived")
    """)
    broker = RedisBroker(server.url, consumer_id="rescuer", options={"lease_timeout": 1})
    publish(broker, 4)
    held = proxy.fault("hold reply", FETCH)
    doomed = subprocess.Popen(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        held.wait(timeout=20)  # the script ran: leased on the server, unknown to the process
    finally:
        doomed.kill()
        out, err = doomed.communicate(timeout=10)
    assert doomed.returncode == -signal.SIGKILL, err
    assert "survived" not in out
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
