"""The embedded result backend: results in a local SQLite file.

By default it shares ``taskq.sqlite3`` with the embedded broker (its own ``kv``
table beside the broker's), opened with the same pragmas so that every process
on the machine reads and writes results safely. ``wait_for`` polls.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from taskq.backends.base import Backend
from taskq.broker.sqlite import SqliteFile, sqlite_path
from taskq.errors import BackendError, ConfigurationError, TimeoutError

# Expired rows read as missing at once; they are deleted by a write at most this
# often, in batches, so a cleanup never holds the write lock for long.
CLEANUP_INTERVAL = 60.0
CLEANUP_BATCH = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL);
CREATE INDEX IF NOT EXISTS kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL;
"""
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
# Counters are stored as decimal text (b"3"), as Redis stores them, so get() reads
# them as it reads any value. An expired row counts as missing. A None expiry
# keeps the row's deadline (Redis INCR without EXPIRE).
_INCR = """
INSERT INTO kv (key, value, expires_at) VALUES (:key, CAST('1' AS BLOB), :expires_at)
ON CONFLICT (key) DO UPDATE SET
    value = CASE WHEN kv.expires_at <= :now THEN CAST('1' AS BLOB)
                 ELSE CAST(CAST(kv.value AS INTEGER) + 1 AS BLOB) END,
    expires_at = CASE WHEN kv.expires_at <= :now THEN excluded.expires_at
                      ELSE COALESCE(excluded.expires_at, kv.expires_at) END
RETURNING CAST(value AS INTEGER)
"""


class SqliteBackend(Backend):
    """Results in the ``kv`` table of a SQLite file; see the module docstring.

    URL forms are those of the SQLite broker (``sqlite_path``). Safe to use from
    any thread and any process. Takes no options.
    """

    def _configure(self) -> None:
        if self.options:
            raise ConfigurationError(
                f"The SQLite result backend takes no options, got {sorted(self.options)}. "
                "Remove result_backend_transport_options."
            )
        self.path = sqlite_path(self.url)
        self._db = SqliteFile(self.path, _SCHEMA, BackendError, "result backend")
        # Shared by threads without a lock: a race costs one extra cleanup at worst.
        self._next_cleanup = 0.0

    def get(self, key: str) -> bytes | None:
        with self._db.reading("get") as conn:
            row = conn.execute(
                f"SELECT value FROM kv WHERE key = ? AND {_LIVE}", (key, time.time())
            ).fetchone()
        return None if row is None else bytes(row[0])

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        with self._db.reading("mget") as conn:
            rows = conn.execute(
                "SELECT key, value FROM kv WHERE key IN (SELECT value FROM json_each(?)) "
                f"AND {_LIVE}",
                (json.dumps(list(keys)), time.time()),
            ).fetchall()
        found = {key: bytes(value) for key, value in rows}
        return [found.get(key) for key in keys]

    def set(self, key: str, value: bytes, expires: float | None) -> None:
        now = time.time()
        with self._db.writing("set") as conn:
            conn.execute(
                "INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                (key, value, None if expires is None else now + expires),
            )
            self._cleanup(conn, now)

    def delete(self, key: str) -> None:
        with self._db.writing("delete") as conn:
            conn.execute("DELETE FROM kv WHERE key = ?", (key,))

    def incr(self, key: str, expires: float | None) -> int:
        now = time.time()
        expires_at = None if expires is None else now + expires
        with self._db.writing("incr") as conn:
            row = conn.execute(_INCR, {"key": key, "expires_at": expires_at, "now": now})
            value = int(row.fetchone()[0])
            self._cleanup(conn, now)
        return value

    def add_member(self, key: str, member: str, expires: float | None) -> int:
        now = time.time()
        with self._db.writing("add_member") as conn:
            row = conn.execute(
                f"SELECT value, expires_at FROM kv WHERE key = ? AND {_LIVE}", (key, now)
            ).fetchone()
            # A JSON list, so get() on the key reads what it holds; a None expiry
            # keeps the live row's deadline, as incr does.
            members = set(json.loads(row[0])) if row is not None else set()
            members.add(member)
            expires_at = row[1] if row is not None else None
            if expires is not None:
                expires_at = now + expires
            conn.execute(
                "INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                (key, json.dumps(sorted(members)).encode(), expires_at),
            )
            self._cleanup(conn, now)
        return len(members)

    def wait_for(
        self, task_id: str, timeout: float | None, interval: float = 0.1
    ) -> dict[str, Any]:
        """Poll until the task is ready; a timeout names the file that was read, since
        a worker that uses another file (another folder, another setting) never
        answers here."""
        try:
            return super().wait_for(task_id, timeout, interval)
        except TimeoutError as exc:
            raise TimeoutError(
                f"{exc}: no worker stored its result in the SQLite file {self.path}. Is a "
                "worker running with this same file? Its banner shows the file it uses."
            ) from None

    def close(self) -> None:
        """Close this thread's connection (see ``SqliteFile.close``)."""
        self._db.close()

    def _cleanup(self, conn: sqlite3.Connection, now: float) -> None:
        if now < self._next_cleanup:
            return
        deleted = conn.execute(
            "DELETE FROM kv WHERE key IN (SELECT key FROM kv WHERE expires_at <= ? LIMIT ?)",
            (now, CLEANUP_BATCH),
        ).rowcount
        # A full batch means more are waiting: let the next write go on with them.
        self._next_cleanup = now if deleted == CLEANUP_BATCH else now + CLEANUP_INTERVAL
