"""The SQL databases the tests use as result backends, and cleaning up after them.

Each test gets a table of its own (``table_name`` option) and drops it after, so
tests that share a server never see each other's rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import servers

#: The kinds of SQL result backend the suites run against.
KINDS = ("postgresql", "mysql", "sqlite")


def backend_url(kind: str, tmp_path: Path) -> str:
    """The ``db+...`` result backend URL for ``kind``; skips when the server or
    SQLAlchemy is missing (fails under CI, as ``servers.require`` does)."""
    pytest.importorskip("sqlalchemy")
    if kind == "postgresql":
        servers.require("postgres")
        return f"db+{servers.POSTGRES_URL}"
    if kind == "mysql":
        servers.require("mysql")
        return f"db+{servers.MYSQL_URL}"
    return f"db+sqlite:///{tmp_path / 'results.sqlite3'}"


def drop_table(url: str, table: str) -> None:
    """Drop a test's table (it may not exist: nothing was stored)."""
    import sqlalchemy as sa

    from taskq.backends.database import sqlalchemy_url

    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    finally:
        engine.dispose()
