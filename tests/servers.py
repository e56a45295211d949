"""Where the test servers are, and skip-or-fail when one is missing.

A test that needs a server skips when it is absent, unless ``CI`` is set: then it
fails, so CI never goes green by skipping. In the fast tier
(``TASKQ_TEST_TIER=fast``, see scripts/test) every test that needs a server
skips at once, servers or not.
"""

from __future__ import annotations

import os
import socket

import pytest

REDIS_URL = os.environ.get("TASKQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("TASKQ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_URL = os.environ.get(
    "TASKQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("TASKQ_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")

PORTS = {"redis": 6379, "amqp": 5672, "postgres": 5432, "mysql": 3306}

#: Servers the running test asked for (conftest cleans up after tests that used RabbitMQ).
used: set[str] = set()


def reachable(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require(server: str) -> None:
    """Skip (or fail under CI) when ``server`` is not listening; skip in the fast tier."""
    if os.environ.get("TASKQ_TEST_TIER") == "fast":
        pytest.skip("the fast tier runs no test that needs a server")
    port = PORTS[server]
    if reachable(port):
        used.add(server)
        return
    message = f"{server} is not reachable on 127.0.0.1:{port}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set, so this fails instead of skipping)")
    pytest.skip(message)


def delete_amqp_queues(suffix: str) -> None:
    """Delete the RabbitMQ queues a test named ``<prefix>-<suffix>`` (queues are
    durable, so they would otherwise pile up on the shared server)."""
    import kombu

    prefixes = (
        "q",
        "routed",
        "percall",
        "interop",
        "cli",
        "a",
        "b",
        "c",
        "other",
        "third",
        "kept",
        "late",
        "gone",
        "pq",
        "dq",
    )
    with kombu.Connection(AMQP_URL) as conn:
        channel = conn.default_channel
        for prefix in prefixes:
            channel.queue_delete(f"{prefix}-{suffix}")
