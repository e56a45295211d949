from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests import servers


@pytest.fixture
def redis_url() -> str:
    servers.require("redis")
    return servers.REDIS_URL


@pytest.fixture
def amqp_url() -> str:
    servers.require("amqp")
    return servers.AMQP_URL


@pytest.fixture
def unique() -> Iterator[str]:
    """A short unique string for queue names and key prefixes, so tests that share
    a server never see each other's data (tests never flush shared servers).
    RabbitMQ queues named ``<prefix>-<unique>`` are deleted afterwards."""
    servers.used.clear()
    value = uuid.uuid4().hex[:10]
    yield value
    if "amqp" in servers.used:
        servers.delete_amqp_queues(value)
