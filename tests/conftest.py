from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from taskq import App
from taskq.broker.redis import RedisBroker
from tests import servers
from tests.faults.proxy import RedisProxy
from tests.worker_support import Gate, Ledger, redis_app


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


@pytest.fixture
def app(unique: str) -> Iterator[App]:
    """A Redis app whose queue and key prefix belong to this test alone
    (``tests.worker_support.redis_app``). Modules that need another app define
    their own ``app``."""
    app = redis_app(unique)
    yield app
    app.close()


@pytest.fixture
def ledger(redis_url: str, unique: str) -> Iterator[Ledger]:
    """A Redis list the test's tasks append to, from any process."""
    ledger = Ledger(unique)
    yield ledger
    ledger.delete()


@pytest.fixture
def release(redis_url: str, unique: str) -> Iterator[Gate]:
    """A gate the test's tasks wait at until the test opens it."""
    gate = Gate(unique, "release")
    yield gate
    gate.delete()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client of the shared Redis, to look at what the test left there."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def proxy(redis_url: str) -> Iterator[RedisProxy]:
    """A fault-injecting proxy in front of the shared Redis (``tests.faults.proxy``)."""
    with RedisProxy(redis_url) as proxy:
        yield proxy


@pytest.fixture
def make_broker(redis_url: str, unique: str) -> Iterator[Callable[..., RedisBroker]]:
    """``make_broker(name="c", url=None, **options)``: a RedisBroker with this test's
    key prefix and consumer id ``<name>-<unique>``, on the shared Redis or at ``url``
    (a ``proxy`` in front of it); closed, and the test's keys deleted, after."""
    brokers: list[RedisBroker] = []

    def make(name: str = "c", url: str | None = None, **options: Any) -> RedisBroker:
        broker = RedisBroker(
            url or redis_url,
            consumer_id=f"{name}-{unique}",
            options={"key_prefix": f"taskq-test-{unique}:", **options},
        )
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close()
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"*{unique}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


# -- the interop matrix ------------------------------------------------------------------


_INTEROP = "tests/test_interop.py::test_"
_MARKS = {
    "passed": "pass", "failed": "FAIL", "error": "FAIL", "skipped": "skip", "xfailed": "xfail",
}  # fmt: skip
# "<broker>-<producer>[-><worker>][-<more>]", as the interop tests name their params.
_PARAMS = re.compile(
    r"^(?P<broker>redis|amqp)(?:-(?P<producer>taskq|celery)(?:->\w+)?)?(?:-(?P<extra>.+))?$"
)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """After tests/test_interop.py ran, print its matrix: feature x producer x broker.
    A taskq producer sends to a Celery worker and a Celery producer to a taskq worker;
    the ``mixed_*`` rows send one workflow through both kinds of worker."""
    cells: dict[str, dict[tuple[str, str], str]] = {}
    for outcome in _MARKS:
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if not nodeid.startswith(_INTEROP) or "[" not in nodeid:
                continue
            if outcome == "passed" and report.when != "call":
                continue
            name, _, params = nodeid[len(_INTEROP) :].partition("[")
            found = _PARAMS.match(params.rstrip("]"))
            if found is None:
                continue
            broker, producer, extra = found.group("broker", "producer", "extra")
            if extra:
                name = f"{name}[{extra}]"
            column = (broker, producer or "taskq")
            row = cells.setdefault(name, {})
            if row.get(column) not in ("failed", "error"):
                row[column] = outcome
    if not cells:
        return
    columns = [(b, p) for b in ("redis", "amqp") for p in ("taskq", "celery")]
    titles = [f"{p}->{'celery' if p == 'taskq' else 'taskq'} {b}" for b, p in columns]
    width = max(len(name) for name in cells)
    write = terminalreporter.write_line
    write("")
    write("interop matrix (producer->worker broker; mixed_*: the workflow runs on both)")
    write("| " + "feature".ljust(width) + " | " + " | ".join(titles) + " |")
    write("|" + "-" * (width + 2) + "|" + "|".join("-" * (len(t) + 2) for t in titles) + "|")
    for name in sorted(cells):
        marks = [_MARKS[cells[name][c]] if c in cells[name] else "-" for c in columns]
        padded = [mark.ljust(len(title)) for mark, title in zip(marks, titles, strict=True)]
        write("| " + name.ljust(width) + " | " + " | ".join(padded) + " |")
