"""The SQL result backend: results in PostgreSQL, MySQL/MariaDB or SQLite via SQLAlchemy 2.

URLs are SQLAlchemy's with ``db+`` in front: ``db+postgresql://user:pw@host/db``,
``db+mysql://root@host/db``, ``db+sqlite:///results.sqlite3``. Without a driver
in the URL, PostgreSQL uses psycopg2 and MySQL uses PyMySQL, the drivers the
``taskq[sqlalchemy]`` extra installs.

Everything lives in one table, created on first use::

    taskq_kv(key VARCHAR(255) PRIMARY KEY, value LARGEBINARY, expires_at FLOAT NULL)

A set (``add_member``) keeps one row per member. Expired rows read as missing at
once and are deleted lazily, in batches, by a write at most once a minute. ``incr`` is a read-modify-write transaction on one
row: an upsert that changes nothing takes the row lock (or creates the row), so
concurrent writers to one key queue up behind it on every database; SQLite
serialises writers anyway. ``wait_for`` polls.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from taskq.backends.base import Backend
from taskq.errors import BackendError, ConfigurationError, did_you_mean
from taskq.urls import mask_url

try:
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.dialects import mysql, postgresql, sqlite
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    raise ConfigurationError(
        f"The SQL result backend needs SQLAlchemy 2 ({exc}). "
        "Install it with: pip install 'taskq[sqlalchemy]'."
    ) from exc

log = logging.getLogger(__name__)

DEFAULT_TABLE = "taskq_kv"
# Expired rows are deleted by a write at most this often, this many at a time, so a
# cleanup never holds locks for long.
CLEANUP_INTERVAL = 60.0
CLEANUP_BATCH = 1000
# Keys per SELECT ... IN (...): well under every database's parameter limit.
_MGET_CHUNK = 500
# SQLAlchemy's own default for mysql is MySQLdb, which needs a C client library.
_DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg2", "mysql": "mysql+pymysql"}
_DIALECTS = ("postgresql", "mysql", "mariadb", "sqlite")
_OPTIONS = ("table_name", "engine_options")
# 50 leaves room for the index name (ix_<table>_expires_at) within MySQL's 64.
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,49}$")
# A set's members are the keys in [key + _MEMBER, key + _MEMBER_END): ";" follows ":".
_MEMBER, _MEMBER_END = "#member:", "#member;"


def sqlalchemy_url(url: str) -> str:
    """``db+mysql://...`` -> ``mysql+pymysql://...``: SQLAlchemy's URL, default drivers filled in."""
    rest = url[len("db+") :] if url.startswith("db+") else url
    scheme, sep, tail = rest.partition("://")
    return f"{_DEFAULT_DRIVERS.get(scheme, scheme)}{sep}{tail}"


def kv_table(name: str) -> sa.Table:
    """The table definition: one row per key."""
    return sa.Table(
        name,
        sa.MetaData(),
        # Keys compare byte by byte: MySQL's default collation ignores case and
        # trailing spaces, and add_member counts a set's rows as a range of keys.
        sa.Column(
            "key",
            sa.String(255)
            .with_variant(mysql.VARCHAR(255, collation="utf8mb4_bin"), "mysql", "mariadb")
            .with_variant(postgresql.VARCHAR(255, collation="C"), "postgresql"),
            primary_key=True,
        ),
        # BLOB on MySQL stops at 64 KiB; a result may be bigger.
        sa.Column(
            "value",
            sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
            nullable=False,
        ),
        # Double precision: MySQL's FLOAT would round a unix time to minutes.
        sa.Column("expires_at", sa.Double(), nullable=True),
        sa.Index(f"ix_{name}_expires_at", "expires_at"),
    )


class DatabaseBackend(Backend):
    """Results in a SQL table (``db+postgresql://``, ``db+mysql://``, ``db+sqlite://``).

    Thread-safe: connections come from SQLAlchemy's pool, opened on first use.
    Database errors are raised as ``BackendError`` naming the URL (password masked).

    Options (``result_backend_transport_options``):
        table_name: the table to use (default ``taskq_kv``), created when missing.
        engine_options: extra keyword arguments for ``sqlalchemy.create_engine``.
    """

    def _configure(self) -> None:
        table_name, engine_options = _check_options(self.options)
        self.table = kv_table(table_name)
        self._engine = _create_engine(self.url, engine_options)
        self._dialect = self._engine.dialect.name
        self._table_ready = False
        self._table_lock = threading.Lock()
        # Shared by threads without a lock: a race costs one extra cleanup at worst.
        self._next_cleanup = 0.0

    # -- primitives ------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        t = self.table
        query = sa.select(t.c.value).where(t.c.key == key, self._live(time.time()))
        with self._connect(f"read {key!r}") as conn:
            value = conn.execute(query).scalar_one_or_none()
        return None if value is None else bytes(value)

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        t, now, found = self.table, time.time(), {}
        with self._connect(f"read {len(keys)} keys") as conn:
            for start in range(0, len(keys), _MGET_CHUNK):
                chunk = list(keys[start : start + _MGET_CHUNK])
                query = sa.select(t.c.key, t.c.value).where(t.c.key.in_(chunk), self._live(now))
                found.update({row.key: bytes(row.value) for row in conn.execute(query)})
        return [found.get(key) for key in keys]

    def set(self, key: str, value: bytes, expires: float | None) -> None:
        now = time.time()
        row = {"key": key, "value": value, "expires_at": _deadline(now, expires)}
        with self._transaction(f"write {key!r}") as conn:
            conn.execute(self._upsert(row, replace=True))
        self._cleanup(now)

    def set_ready_many(self, items: Sequence[tuple[str, bytes]], expires: float | None) -> None:
        """One transaction, one multi-row upsert (a worker's batch of results)."""
        now = time.time()
        deadline = _deadline(now, expires)
        # The last value of a key given twice: one statement may not touch a row twice.
        rows = [
            {"key": key, "value": value, "expires_at": deadline}
            for key, value in dict(items).items()
        ]
        if not rows:
            return
        with self._transaction(f"write {len(rows)} results") as conn:
            conn.execute(self._upsert(None, replace=True), rows)
        self._cleanup(now)

    def delete(self, key: str) -> None:
        t = self.table
        members = sa.and_(t.c.key >= f"{key}{_MEMBER}", t.c.key < f"{key}{_MEMBER_END}")
        with self._transaction(f"delete {key!r}") as conn:
            conn.execute(sa.delete(t).where(sa.or_(t.c.key == key, members)))  # a set too

    def incr(self, key: str, expires: float | None) -> int:
        # Counters are decimal text (b"3"), as Redis stores them, so get() reads them.
        value = self._update(key, expires, lambda old: b"%d" % (int(old or 0) + 1), "increment")
        return int(value)

    def add_member(self, key: str, member: str, expires: float | None) -> int:
        """Add ``member`` to the set at ``key``; return the set's size.

        Each member is a row of its own (``<key>#member:<member>``), written in its
        own transaction, so the members of a big chord do not queue up behind one
        row lock (a commit waits for the disk). The size is counted after that
        commit: it includes every add committed before, so the last adder always
        sees the full set, and two concurrent adders may both see it: callers that
        act on the full size once must claim that with ``incr`` (the chord does).
        """
        now = time.time()
        first, stop = f"{key}{_MEMBER}", f"{key}{_MEMBER_END}"
        row = {"key": first + member, "value": b"", "expires_at": _deadline(now, expires)}
        t = self.table
        count = sa.select(sa.func.count()).where(t.c.key >= first, t.c.key < stop, self._live(now))
        with self._connect(f"add a member to {key!r}") as conn:
            with conn.begin():
                conn.execute(self._upsert(row, replace=True))
            # Counted after the commit, in a transaction of its own (see above).
            size = int(conn.execute(count).scalar_one())
        self._cleanup(now)
        return size

    def close(self) -> None:
        """Close the pooled connections (the backend reconnects on next use)."""
        self._engine.dispose()

    # -- helpers ---------------------------------------------------------------------

    def _update(
        self,
        key: str,
        expires: float | None,
        change: Callable[[bytes | None], bytes],
        what: str,
    ) -> bytes:
        """Replace the value at ``key`` with ``change(old)`` (old is None when missing or
        expired) in one transaction, holding the row lock throughout; return the new
        value. A None ``expires`` keeps a live row's deadline (Redis INCR without EXPIRE).
        """
        t, now = self.table, time.time()
        # A placeholder row that reads as expired: inserted when the key is missing,
        # otherwise an update that changes nothing but locks the row until commit.
        placeholder = {"key": key, "value": b"", "expires_at": 0.0}
        with self._transaction(f"{what} {key!r}") as conn:
            conn.execute(self._upsert(placeholder, replace=False))
            row = conn.execute(
                sa.select(t.c.value, t.c.expires_at).where(t.c.key == key).with_for_update()
            ).one()
            live = row.expires_at is None or row.expires_at > now
            value = change(bytes(row.value) if live else None)
            deadline = row.expires_at if live and expires is None else _deadline(now, expires)
            conn.execute(
                sa.update(t).where(t.c.key == key).values(value=value, expires_at=deadline)
            )
        self._cleanup(now)
        return value

    def _upsert(self, row: dict[str, Any] | None, *, replace: bool) -> sa.Insert:
        """INSERT ``row`` (None: the rows given to ``execute``); when the key exists,
        replace its value and expiry (``replace``) or change nothing, which still
        locks the row."""
        t = self.table
        if self._dialect in ("mysql", "mariadb"):
            my = mysql.insert(t)
            if row is not None:
                my = my.values(row)
            if replace:
                return my.on_duplicate_key_update(
                    value=my.inserted.value, expires_at=my.inserted.expires_at
                )
            return my.on_duplicate_key_update(expires_at=t.c.expires_at)
        stmt = (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(t)
        if row is not None:
            stmt = stmt.values(row)
        update = (
            {"value": stmt.excluded.value, "expires_at": stmt.excluded.expires_at}
            if replace
            else {"expires_at": t.c.expires_at}
        )
        return stmt.on_conflict_do_update(index_elements=[t.c.key], set_=update)

    def _live(self, now: float) -> sa.ColumnElement[bool]:
        expires_at = self.table.c.expires_at
        return sa.or_(expires_at.is_(None), expires_at > now)

    def _cleanup(self, now: float) -> None:
        """Delete a batch of expired rows, at most every ``CLEANUP_INTERVAL`` seconds.

        Best effort: a failure is logged and retried later, never raised.
        """
        if now < self._next_cleanup:
            return
        self._next_cleanup = now + CLEANUP_INTERVAL
        t = self.table
        if self._dialect in ("mysql", "mariadb"):
            # MySQL refuses LIMIT in an IN subquery but has DELETE ... LIMIT.
            stmt = (
                sa.delete(t)
                .where(t.c.expires_at <= now)
                .with_dialect_options(mysql_limit=CLEANUP_BATCH)
            )
        else:
            expired = sa.select(t.c.key).where(t.c.expires_at <= now).limit(CLEANUP_BATCH)
            stmt = sa.delete(t).where(t.c.key.in_(expired))
        try:
            with self._transaction("delete expired results") as conn:
                deleted = conn.execute(stmt).rowcount
        except BackendError as exc:
            log.warning("%s", exc)
            return
        if deleted == CLEANUP_BATCH:  # more are waiting: let the next write go on
            self._next_cleanup = now

    @contextmanager
    def _connect(self, action: str) -> Iterator[sa.Connection]:
        with self._translate(action):
            self._ensure_table()
            with self._engine.connect() as conn:
                yield conn

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sa.Connection]:
        with self._translate(action):
            self._ensure_table()
            with self._engine.begin() as conn:
                yield conn

    def _ensure_table(self) -> None:
        if self._table_ready:
            return
        with self._table_lock:
            if self._table_ready:
                return
            try:
                self.table.metadata.create_all(self._engine, checkfirst=True)
            except sa_exc.DBAPIError:
                # Another process may have created it between our check and CREATE.
                if not sa.inspect(self._engine).has_table(self.table.name):
                    raise
            self._table_ready = True

    @contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except sa_exc.SQLAlchemyError as exc:
            reason = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
            raise BackendError(
                f"SQL result backend {mask_url(self.url)} could not {action}: "
                f"{str(reason).strip()}. {_hint(exc)}"
            ) from exc


def _deadline(now: float, expires: float | None) -> float | None:
    return None if expires is None else now + expires


def _hint(exc: sa_exc.SQLAlchemyError) -> str:
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return (
            "Is the database running and reachable, and are the user, password and "
            "database name in result_backend right?"
        )
    return "Check the database server's log, and that the user may create and write the table."


def _check_options(options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    for name in options:
        if name not in _OPTIONS:
            raise ConfigurationError(
                f"Unknown SQL result backend option {name!r}.{did_you_mean(name, _OPTIONS)} "
                f"Known: {', '.join(_OPTIONS)}."
            )
    table_name = options.get("table_name", DEFAULT_TABLE)
    if not isinstance(table_name, str) or not _TABLE_NAME.match(table_name):
        raise ConfigurationError(
            f"SQL result backend option table_name={table_name!r} must be a plain SQL "
            "name: letters, digits and underscores, not starting with a digit, at most 50."
        )
    engine_options = options.get("engine_options", {})
    if not isinstance(engine_options, dict):
        raise ConfigurationError(
            f"SQL result backend option engine_options={engine_options!r} must be a dict "
            "of sqlalchemy.create_engine() keyword arguments."
        )
    return table_name, engine_options


def _create_engine(url: str, engine_options: dict[str, Any]) -> sa.Engine:
    """The engine for ``url``; nothing connects until first use."""
    try:
        target = sa.make_url(sqlalchemy_url(url))
    except sa_exc.ArgumentError as exc:
        raise ConfigurationError(
            f"Cannot parse the result backend URL {mask_url(url)!r}: {exc}. Write it as "
            "'db+postgresql://user:password@host/dbname', 'db+mysql://...' or "
            "'db+sqlite:///path/to/file.sqlite3'."
        ) from exc
    dialect = target.get_backend_name()
    if dialect not in _DIALECTS:
        raise ConfigurationError(
            f"The SQL result backend supports postgresql, mysql (MariaDB) and sqlite, not "
            f"{dialect!r} (from {mask_url(url)!r})."
        )
    # Fail fast when the server is down, instead of hanging a worker thread.
    connect_args: dict[str, Any] = (
        {"timeout": 30} if dialect == "sqlite" else {"connect_timeout": 5}
    )
    options: dict[str, Any] = {"pool_pre_ping": True, "connect_args": connect_args}
    options.update(engine_options)
    try:
        engine = sa.create_engine(target, **options)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"The database driver for {mask_url(url)!r} is not installed ({exc}). "
            "Install it with: pip install 'taskq[sqlalchemy]' (psycopg2 for PostgreSQL, "
            "PyMySQL for MySQL), or name an installed driver in the URL "
            "(db+postgresql+psycopg://...)."
        ) from exc
    except (sa_exc.ArgumentError, TypeError) as exc:
        raise ConfigurationError(
            f"Cannot set up the SQL result backend {mask_url(url)!r}: {exc}. "
            "Check result_backend and engine_options."
        ) from exc
    if dialect == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
    # WAL lets readers run beside the writer; with it, synchronous=NORMAL is still
    # safe against corruption and spares an fsync per commit (as the embedded backend).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
