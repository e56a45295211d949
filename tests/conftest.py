from __future__ import annotations

import uuid

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
def unique() -> str:
    """A short unique string for queue names and key prefixes, so tests that share
    a server never see each other's data (tests never flush shared servers)."""
    return uuid.uuid4().hex[:10]
