"""The SQL result backend's own behaviour (the shared contract is in test_backends):
URLs and drivers, options, errors people can act on, lazy cleanup of expired rows."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq.backends import backend_from_url
from taskq.errors import BackendError, ConfigurationError
from tests import sql

sa = pytest.importorskip("sqlalchemy")
database = pytest.importorskip("taskq.backends.database")


@pytest.fixture(params=sql.KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def table(kind: str, unique: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    url, name = sql.backend_url(kind, tmp_path), f"taskq_test_{unique}"
    yield url, name
    sql.drop_table(url, name)


def test_urls_get_the_installed_drivers() -> None:
    assert database.sqlalchemy_url("db+postgresql://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert database.sqlalchemy_url("db+mysql://root@h/db") == "mysql+pymysql://root@h/db"
    assert database.sqlalchemy_url("db+mysql+mysqldb://h/db") == "mysql+mysqldb://h/db"
    assert database.sqlalchemy_url("db+sqlite:///x.db") == "sqlite:///x.db"


def test_expired_rows_read_as_missing_and_are_deleted_by_a_later_write(
    table: tuple[str, str],
) -> None:
    url, name = table
    backend = backend_from_url(url, options={"table_name": name})
    backend.set("old", b"x", 0.05)
    backend.set("kept", b"y", None)
    deadline = time.monotonic() + 5
    while backend.get("old") is not None:  # expiry is by the clock
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert backend.mget(["old", "kept"]) == [None, b"y"]
    backend._next_cleanup = 0.0  # the next write cleans up now, not in a minute
    backend.set("new", b"z", None)
    with backend._engine.connect() as conn:
        keys = set(conn.execute(sa.select(backend.table.c.key)).scalars())
    assert keys == {"kept", "new"}
    backend.close()


def test_unreachable_database_fails_fast_with_the_password_masked() -> None:
    backend = backend_from_url("db+postgresql://taskq:hunter2@127.0.0.1:1/results")
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        backend.get("some-key")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "postgresql://taskq:***@127.0.0.1:1/results" in message
    assert "hunter2" not in message
    assert "Is the database running" in message


def test_options_and_urls_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'table_name'"):
        backend_from_url("db+sqlite://", options={"table_nam": "x"})
    with pytest.raises(ConfigurationError, match="plain SQL name"):
        backend_from_url("db+sqlite://", options={"table_name": "x; DROP TABLE y"})
    with pytest.raises(ConfigurationError, match="supports postgresql, mysql"):
        backend_from_url("db+oracle://scott:tiger@host/db")


def test_missing_driver_or_sqlalchemy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'taskq\[sqlalchemy\]'"):
        backend_from_url("db+postgresql://u:secret@localhost/db")
    monkeypatch.delitem(sys.modules, "taskq.backends.database")
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'taskq\[sqlalchemy\]'"):
        backend_from_url("db+sqlite://")
