"""RedisBroker across a Redis restart, on a private redis-server (the shared one stays up)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from taskq.broker.base import Envelope
from taskq.broker.redis import RedisBroker
from taskq.errors import BrokerError


class PrivateRedis:
    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail(
                "redis-server is not installed (CI is set, so this fails instead of skipping)"
            )
        pytest.skip("redis-server is not installed")
    private = PrivateRedis()
    private.start()
    yield private
    private.stop()


def envelope(n: int) -> Envelope:
    return Envelope(body=b"%d" % n, content_type="text/plain", headers={"id": str(n)})


@pytest.mark.timeout(60)
def test_keeps_working_after_redis_restarts(server: PrivateRedis) -> None:
    broker = RedisBroker(server.url, consumer_id="c", options={"lease_timeout": 5.0})
    broker.publish(envelope(1), "q")
    broker.ack(broker.fetch(["q"], 10, 1.0))

    server.stop()
    started = time.monotonic()
    with pytest.raises(BrokerError, match="unreachable"):
        broker.publish(envelope(2), "q")
    with pytest.raises(BrokerError, match="unreachable"):
        broker.fetch(["q"], 10, 1.0)
    assert time.monotonic() - started < 5

    server.start()  # empty: no data, no scripts
    broker.heartbeat()
    broker.publish(envelope(3), "q")
    [delivery] = broker.fetch(["q"], 10, 1.0)
    assert delivery.envelope.headers["id"] == "3"
    broker.ack([delivery])

    # The pipelined blocking path (BLMOVE + EVALSHA) after a restart too.
    server.stop()
    server.start()
    threading.Timer(0.2, lambda: redis.Redis.from_url(server.url).lpush("q", b"raw")).start()
    [late] = broker.fetch(["q"], 10, 5.0)
    assert late.envelope.body == b"raw"  # malformed, but delivered
    broker.close()


@pytest.mark.timeout(60)
def test_blocked_fetch_fails_when_redis_goes_away(server: PrivateRedis) -> None:
    broker = RedisBroker(server.url, consumer_id="c")
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            broker.fetch(["q"], 10, 30.0)
        except BrokerError as exc:
            errors.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    client = redis.Redis.from_url(server.url)
    deadline = time.monotonic() + 10
    while not any(c["cmd"] == "blmove" for c in client.client_list()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    client.close()
    server.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert errors and "unreachable" in str(errors[0])
    broker.close()
