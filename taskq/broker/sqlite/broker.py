"""The embedded broker: queues in one local SQLite file, no server needed.

With no broker configured, taskq keeps its queues (and by default its results) in
``./taskq.sqlite3``. Any number of workers and producers on one machine share the
file: WAL mode lets readers run beside the one writer, every write is a short
``BEGIN IMMEDIATE`` transaction that waits for the lock (``busy_timeout``), and a
consumer holds what it fetched under a lease that other consumers take back when
it stops heartbeating. SQLite's locking needs a local disk, not a network share.

``SqliteFile`` (one connection per thread and process, shared pragmas, errors
translated) and ``sqlite_path`` (URL to file) are shared with the result backend.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from taskq.broker.base import Broker, DeadLetter, Delivery, Envelope, QueueDepth, QueueSpec
from taskq.broker.envelope import decode_payload, encode_payload
from taskq.broker.lease import LeaseClock
from taskq.errors import BrokerError, ConfigurationError, TaskqError, did_you_mean
from taskq.queues import Queues

__all__ = [
    "BUSY_TIMEOUT",
    "DEFAULT_FILE",
    "SqliteBroker",
    "SqliteFile",
    "sqlite_path",
]

DEFAULT_FILE = "taskq.sqlite3"
# Seconds a write waits for another process's write lock. Transactions here last
# microseconds, so running out of this means a process is stuck holding the file.
BUSY_TIMEOUT = 10.0
_FIRST_POLL = 0.001

# Connections inherited from the parent across fork. SQLite forbids using (and
# closing) them in the child, so the child keeps them referenced: freeing one
# would run sqlite3_close on the parent's file handles and locks.
_INHERITED: list[sqlite3.Connection] = []
_TAGS = itertools.count(1)


def sqlite_path(url: str) -> Path:
    """The database file named by a sqlite URL, as an absolute path.

    ``sqlite:///relative/path.db`` is relative to the working directory,
    ``sqlite:////absolute/path.db`` is absolute and ``sqlite://`` means
    ``./taskq.sqlite3``. The file need not exist yet.

    Raises:
        ConfigurationError: not a sqlite URL, or it names no shareable file.
    """
    forms = (
        f"Use sqlite:///relative/path.db, sqlite:////absolute/path.db "
        f"or sqlite:// for ./{DEFAULT_FILE}."
    )
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigurationError(f"{url!r} is not a sqlite URL. {forms}")
    if parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(
            f"SQLite URL {url!r} has a host, query or fragment, but a sqlite URL only "
            f"names a file (options go in the transport options). {forms}"
        )
    name = unquote(parts.path[1:])  # the first slash ends the (empty) host part
    if name == ":memory:":
        raise ConfigurationError(
            f"SQLite URL {url!r} names an in-memory database, which the worker's "
            f"threads and processes cannot share. {forms}"
        )
    return Path(name or DEFAULT_FILE).absolute()


class SqliteFile:
    """One SQLite database file used from many threads and processes.

    Each thread of each process gets its own connection, opened on first use with
    the pragmas every user of the file must agree on (WAL, ``synchronous=NORMAL``,
    busy timeout), after running ``schema`` (idempotent DDL). ``sqlite3.Error`` is
    raised as ``error`` with the file's path and advice.

    Args:
        path: the database file; its directory must exist.
        schema: ``CREATE ... IF NOT EXISTS`` statements.
        error: the exception type to raise (``BrokerError``, ``BackendError``).
        role: what the file is for, used in error messages ("broker").
    """

    def __init__(self, path: Path, schema: str, error: type[TaskqError], role: str) -> None:
        self.path = path
        self._schema = schema
        self._error = error
        self._role = role
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened now if needed (or if we were forked)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        if conn is not None:
            _INHERITED.append(conn)
            self._local.conn = None
        conn = self._open()
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _open(self) -> sqlite3.Connection:
        directory = self.path.parent
        if not directory.is_dir():
            raise self._error(
                f"SQLite {self._role} file {self.path}: the directory {directory} does not "
                f"exist. Create it (mkdir -p {directory}) or use a URL in an existing directory."
            )
        _create_private(self.path)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(f"BEGIN IMMEDIATE;\n{self._schema}\nCOMMIT;")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def reading(self, what: str) -> Iterator[sqlite3.Connection]:
        """This thread's connection for reads (autocommit); ``what`` names the operation."""
        with self._translated(what):
            yield self.connection()

    @contextmanager
    def writing(self, what: str) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction, committed when the block succeeds."""
        with self._translated(what):
            conn = self.connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._error(
                f"SQLite {self._role} file {self.path}: {what} failed: {exc}. {_advice(exc)}"
            ) from exc

    def close(self) -> None:
        """Close the calling thread's connection. sqlite3 lets only the owning thread
        close a connection; other threads' connections close when those threads end."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and self._local.pid == os.getpid():
            conn.close()


def _create_private(path: Path) -> None:
    """Create ``path`` readable and writable by its owner only (0600, whatever the
    umask), unless it exists: it holds task arguments and results (issue 12).
    SQLite gives the ``-wal`` and ``-shm`` files it creates the database file's mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # sqlite3.connect reports it, with the file's path and advice
    os.fchmod(fd, 0o600)  # the umask may have taken bits O_CREAT asked for; keep none
    os.close(fd)


def _enable_wal(conn: sqlite3.Connection) -> None:
    # When several processes open a new file at once, switching it to WAL can fail
    # with "database is locked" at once instead of waiting out the busy timeout
    # (seen with 8 processes on SQLite 3.40), so retry until that timeout.
    deadline = time.monotonic() + BUSY_TIMEOUT
    pause = _FIRST_POLL
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _advice(exc: sqlite3.Error) -> str:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return (
            f"Another process held the write lock for over {BUSY_TIMEOUT:g}s; "
            "look for a stuck process using this file."
        )
    if "readonly" in text or "unable to open" in text or "permission" in text:
        return "Make sure this user can read and write the file and its directory."
    if "malformed" in text or "not a database" in text or "disk i/o" in text:
        return "The file is damaged or not a SQLite database: move it aside and start again."
    return "Check that the file is a taskq database on a local disk."


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    -- AUTOINCREMENT: ids are never reused, so a late ack cannot hit a newer message.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    payload BLOB NOT NULL,
    visible_at REAL NOT NULL,
    consumer TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0
);
-- Waiting messages in fetch order, visible_at included so delayed ones are
-- skipped inside the index; leased rows leave it.
CREATE INDEX IF NOT EXISTS messages_waiting
    ON messages (queue, priority DESC, id, visible_at) WHERE consumer IS NULL;
CREATE INDEX IF NOT EXISTS messages_leased ON messages (consumer) WHERE consumer IS NOT NULL;
CREATE TABLE IF NOT EXISTS consumers (id TEXT PRIMARY KEY, lease_until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL,
    time REAL NOT NULL
);
"""

_INSERT = "INSERT INTO messages (queue, priority, payload, visible_at) VALUES (?, ?, ?, ?)"
_RENEW = (
    "INSERT INTO consumers (id, lease_until) VALUES (?, ?) "
    "ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until"
)
_IDS = "SELECT value FROM json_each(?)"


@lru_cache(maxsize=32)
def _lease_sql(queue_count: int) -> str:
    # One indexed, ordered read per queue, merged: "queue IN (...)" would make
    # SQLite sort every waiting message of those queues on each fetch.
    one = (
        "SELECT * FROM (SELECT id, priority FROM messages WHERE queue = ? AND consumer IS NULL"
        " AND visible_at <= ? ORDER BY priority DESC, id LIMIT ?)"
    )
    merged = " UNION ALL ".join([one] * queue_count)
    return (
        "UPDATE messages SET consumer = ?, deliveries = deliveries + 1 WHERE id IN "
        f"(SELECT id FROM ({merged}) ORDER BY priority DESC, id LIMIT ?) "
        "RETURNING id, queue, priority, payload, deliveries"
    )


class SqliteBroker(Broker):
    """Queues in a local SQLite file shared by the processes of one machine.

    Order: higher ``priority`` first (as RabbitMQ; 0 when unset), then first in,
    first out. ``publish(eta=...)`` stores the message invisible until ``eta``.
    A fetch leases messages to ``consumer_id`` until acked, requeued or
    dead-lettered; when a consumer's lease (renewed by ``fetch`` and ``heartbeat``)
    runs out, the next ``heartbeat`` of any consumer returns its messages to their
    queues and counts a delivery attempt. Rows that are not taskq envelopes come
    out with content type ``application/x-taskq-malformed``, the raw payload as
    body and the problem in the ``x-taskq-error`` header, for dead-lettering.

    Options:
        lease_timeout: seconds a consumer's lease lasts (default 45).
        poll_interval: longest pause between polls of an idle fetch (default 0.05).
    """

    supports_delayed = True

    def __init__(
        self,
        url: str,
        *,
        consumer_id: str,
        options: dict[str, Any] | None = None,
        queues: Queues | None = None,
    ) -> None:
        super().__init__(url, consumer_id=consumer_id, options=options, queues=queues)
        # The app passes connect_timeout and publish_timeout to every broker; a local
        # file has no connect step, and a write waits BUSY_TIMEOUT at most.
        unknown = sorted(
            set(self.options)
            - {"lease_timeout", "poll_interval", "connect_timeout", "publish_timeout"}
        )
        if unknown:
            raise ConfigurationError(
                f"Unknown SQLite broker option {unknown[0]!r}."
                f"{did_you_mean(unknown[0], ('lease_timeout', 'poll_interval'))} "
                "Known: lease_timeout, poll_interval."
            )
        self.lease_timeout = _seconds(self.options, "lease_timeout", 45.0)
        self.poll_interval = _seconds(self.options, "poll_interval", 0.05)
        self.path = sqlite_path(url)
        self._db = SqliteFile(self.path, _SCHEMA, BrokerError, "broker")
        self._clock = LeaseClock(self.lease_timeout)

    def declare(self, queues: Sequence[QueueSpec]) -> None:
        """Queues need no declaring here; this creates the file and tables."""
        with self._db.reading("declare"):
            pass

    def publish(
        self,
        envelope: Envelope,
        queue: str,
        *,
        priority: int | None = None,
        eta: float | None = None,
    ) -> None:
        row = _row(envelope, queue, priority, eta)
        with self._db.writing("publish") as conn:
            conn.execute(_INSERT, row)

    def publish_many(self, items: Sequence[tuple[Envelope, str, int | None]]) -> None:
        """Publish all items in one transaction."""
        rows = [_row(envelope, queue, priority, None) for envelope, queue, priority in items]
        with self._db.writing("publish") as conn:
            conn.executemany(_INSERT, rows)

    def fetch(
        self, queues: Sequence[str], max_count: int, timeout: float, *, read_ahead: bool = False
    ) -> list[Delivery]:
        names = list(dict.fromkeys(queues))
        if not names or max_count <= 0:
            return []
        deadline = time.monotonic() + max(timeout, 0.0)
        pause = _FIRST_POLL
        while True:
            deliveries = self._lease(names, max_count)
            remaining = deadline - time.monotonic()
            if deliveries or remaining <= 0:
                return deliveries
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, self.poll_interval)

    def _lease(self, queues: list[str], max_count: int) -> list[Delivery]:
        # A read first: idle polls then never take the write lock producers need.
        placeholders = ", ".join("?" * len(queues))
        with self._db.reading("fetch") as conn:
            found = conn.execute(
                f"SELECT 1 FROM messages WHERE queue IN ({placeholders}) "
                "AND consumer IS NULL AND visible_at <= ? LIMIT 1",
                (*queues, time.time()),
            ).fetchone()
        if found is None:
            return []
        sent_at = time.monotonic()
        with self._db.writing("fetch") as conn:
            now = time.time()
            params: list[Any] = [self.consumer_id]
            for queue in queues:
                params += [queue, now, max_count]
            rows = conn.execute(_lease_sql(len(queues)), (*params, max_count)).fetchall()
            if rows:
                conn.execute(_RENEW, (self.consumer_id, now + self.lease_timeout))
        if rows:
            self._clock.renewed(sent_at)
        rows.sort(key=lambda row: (-row[2], row[0]))
        return [
            Delivery(
                envelope=_decode(payload),
                queue=queue,
                tag=f"{message_id}.{next(_TAGS)}",
                delivery_count=deliveries,
                raw=sent_at,  # when it was leased (see still_leased)
            )
            for message_id, queue, _priority, payload, deliveries in rows
        ]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete the messages, whoever holds them now: the work is done."""
        if deliveries:
            with self._db.writing("ack") as conn:
                conn.execute(f"DELETE FROM messages WHERE id IN ({_IDS})", (_ids(deliveries),))

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Return messages still leased to this consumer; one whose lease ran out and
        went to another consumer is left alone."""
        if deliveries:
            with self._db.writing("requeue") as conn:
                conn.execute(
                    "UPDATE messages SET consumer = NULL, deliveries = MAX(deliveries - 1, 0) "
                    f"WHERE consumer = ? AND id IN ({_IDS})",
                    (self.consumer_id, _ids(deliveries)),
                )

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        message_id = _message_id(delivery)
        with self._db.writing("dead_letter") as conn:
            conn.execute(
                "INSERT INTO dead_letters (queue, priority, reason, payload, time) "
                "SELECT queue, priority, ?, payload, ? FROM messages WHERE id = ?",
                (reason, time.time(), message_id),
            )
            conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def still_leased(self, delivery: Delivery) -> bool:
        """See ``Broker.still_leased``: a clock read unless this consumer's renewals
        had a gap since the message was leased (``taskq.broker.lease``); then a
        look at the row, renewing the lease when it is still this consumer's."""
        leased_at = delivery.raw if isinstance(delivery.raw, float) else 0.0
        if not self._clock.in_doubt(leased_at):
            return True
        sent_at = time.monotonic()
        with self._db.writing("check a lease") as conn:
            held = conn.execute(
                "SELECT 1 FROM messages WHERE id = ? AND consumer = ?",
                (_message_id(delivery), self.consumer_id),
            ).fetchone()
            if held:
                conn.execute(_RENEW, (self.consumer_id, time.time() + self.lease_timeout))
        if held:
            self._clock.renewed(sent_at)
        return held is not None

    def heartbeat(self) -> None:
        sent_at = time.monotonic()
        with self._db.writing("heartbeat") as conn:
            now = time.time()
            conn.execute(_RENEW, (self.consumer_id, now + self.lease_timeout))
            # Leases of unknown consumers count as run out too, so no row stays
            # leased forever if its consumer row went missing.
            conn.execute(
                "UPDATE messages SET consumer = NULL WHERE consumer IS NOT NULL AND consumer "
                "NOT IN (SELECT id FROM consumers WHERE lease_until >= ?)",
                (now,),
            )
            conn.execute("DELETE FROM consumers WHERE lease_until < ?", (now,))
        self._clock.renewed(sent_at)

    def purge(self, queue: str) -> int:
        """Delete the waiting and delayed messages of ``queue``; leased ones stay."""
        with self._db.writing("purge") as conn:
            cursor = conn.execute(
                "DELETE FROM messages WHERE queue = ? AND consumer IS NULL", (queue,)
            )
            return cursor.rowcount

    def queue_depths(self, queues: Sequence[str]) -> dict[str, QueueDepth]:
        """Waiting rows split by ``visible_at`` (ready now or delayed), and dead letters,
        per queue; leased rows are not counted."""
        names, now = json.dumps(list(queues)), time.time()
        with self._db.reading("queue_depths") as conn:
            waiting = conn.execute(
                "SELECT queue, SUM(visible_at <= ?), SUM(visible_at > ?) FROM messages "
                f"WHERE consumer IS NULL AND queue IN ({_IDS}) GROUP BY queue",
                (now, now, names),
            ).fetchall()
            dead = conn.execute(
                f"SELECT queue, COUNT(*) FROM dead_letters WHERE queue IN ({_IDS}) GROUP BY queue",
                (names,),
            ).fetchall()
        ready = {queue: (int(now or 0), int(later or 0)) for queue, now, later in waiting}
        parked = {queue: int(count) for queue, count in dead}
        return {
            queue: QueueDepth(*ready.get(queue, (0, 0)), dead=parked.get(queue, 0))
            for queue in queues
        }

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._db.reading("dead_letters") as conn:
            rows = conn.execute(
                "SELECT id, queue, reason, payload, time FROM dead_letters ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            DeadLetter(str(row_id), queue, reason, _decode(payload), at)
            for row_id, queue, reason, payload, at in rows
        ]

    def requeue_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        """Put parked messages back at their queues' tails with a fresh delivery count."""
        where = ""
        params: tuple[str, ...] = ()
        if ids is not None:
            where = f"WHERE id IN ({_IDS})"
            params = (json.dumps([int(i) for i in ids if i.isdigit()]),)
        with self._db.writing("requeue_dead_letters") as conn:
            cursor = conn.execute(
                "INSERT INTO messages (queue, priority, payload, visible_at) "
                f"SELECT queue, priority, payload, ? FROM dead_letters {where} ORDER BY id",
                (time.time(), *params),
            )
            conn.execute(f"DELETE FROM dead_letters {where}", params)
            return cursor.rowcount

    def purge_dead_letters(self) -> int:
        with self._db.writing("purge_dead_letters") as conn:
            return conn.execute("DELETE FROM dead_letters").rowcount

    def close(self) -> None:
        """Close this thread's connection (see ``SqliteFile.close``)."""
        self._db.close()


def _seconds(options: dict[str, Any], name: str, default: float) -> float:
    value = options.get(name, default)
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(
            f"SQLite broker option {name}={value!r} must be a positive number of seconds "
            f"(default {default})."
        )
    return float(value)


def _row(
    envelope: Envelope, queue: str, priority: int | None, eta: float | None
) -> tuple[str, int, bytes, float]:
    if priority is None:
        priority = int(envelope.properties.get("priority") or 0)
    visible_at = time.time() if eta is None else eta
    return queue, priority, _encode(envelope, queue, priority), visible_at


def _ids(deliveries: Sequence[Delivery]) -> str:
    return json.dumps([_message_id(delivery) for delivery in deliveries])


def _message_id(delivery: Delivery) -> int:
    head = delivery.tag.partition(".")[0]
    if not head.isdigit():
        raise BrokerError(
            f"Delivery tag {delivery.tag!r} did not come from the SQLite broker; "
            "ack, requeue and dead-letter messages with the broker that fetched them."
        )
    return int(head)


def _encode(envelope: Envelope, queue: str, priority: int) -> bytes:
    """The envelope as JSON in kombu's virtual-transport layout (as in Redis), with
    its properties as given (no default ``delivery_mode``)."""
    return encode_payload(envelope, queue, priority, delivery_mode=None)


def _decode(payload: bytes | str) -> Envelope:
    """The envelope in ``payload``, or a malformed-content envelope saying why not."""
    if isinstance(payload, str):  # a row written by hand as TEXT
        payload = payload.encode("utf-8")
    return decode_payload(payload)
