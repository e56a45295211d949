"""Fixtures of the fault-injection suite: private servers, the ledger, workers."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskq import App
from tests.faults.faultproj import Config, make_app
from tests.faults.ledger import REPORTS, Ledger
from tests.faults.redis_server import PrivateRedis


@pytest.fixture(scope="session")
def ledger_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """Where the ledger lives: a private Redis that no test faults."""
    server = PrivateRedis(tmp_path_factory.mktemp("ledger-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def ledger(ledger_server: PrivateRedis) -> Iterator[Ledger]:
    book = Ledger(ledger_server.url, f"ledger:{uuid.uuid4().hex}")
    yield book
    book.delete()


@pytest.fixture
def broker_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """The broker's Redis, this test's own: durable (AOF, fsync on every write)."""
    server = PrivateRedis(tmp_path / "broker-redis", durable=True)
    server.start()
    yield server
    server.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: fault-injection suite (part of the normal run; -m 'not faults' skips)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORTS:
        return
    terminalreporter.write_sep("=", "taskq fault-injection ledger")
    for report in sorted(REPORTS, key=lambda r: int(r.scenario.split()[0])):
        terminalreporter.write_line(report.line())


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def make_config(ledger: Ledger, unique: str) -> Callable[..., Config]:
    """``Config`` for this test: its own queue and ledger key; the rest as given."""

    def make(broker_url: str, **settings: Any) -> Config:
        settings.setdefault("queue", f"faults-{unique}")
        return Config(
            broker_url=broker_url, ledger_url=ledger.url, ledger_key=ledger.key, **settings
        )

    return make


@pytest.fixture
def producer() -> Iterator[Callable[[Config], App]]:
    """Apps built in this process (the producer side), closed after the test."""
    apps: list[App] = []

    def make(config: Config) -> App:
        apps.append(make_app(config))
        return apps[-1]

    yield make
    for app in apps:
        app.close()
