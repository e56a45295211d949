"""The embedded SQLite broker: ordering, leases, delays, dead letters, processes."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskq.broker.base import Delivery, Envelope
from taskq.broker.envelope import MALFORMED_CONTENT_TYPE
from taskq.broker.sqlite.broker import SqliteBroker, _enable_wal, sqlite_path
from taskq.errors import BrokerError, ConfigurationError

Q = "default"


def envelope(body: bytes, **properties: Any) -> Envelope:
    return Envelope(body=body, content_type="application/json", properties=properties)


def bodies(deliveries: list[Delivery]) -> list[bytes]:
    return [d.envelope.body for d in deliveries]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.sqlite3'}"


@pytest.fixture
def make(url: str) -> Iterator[Callable[..., SqliteBroker]]:
    made: list[SqliteBroker] = []

    def make(consumer_id: str = "c1", **options: Any) -> SqliteBroker:
        broker = SqliteBroker(url, consumer_id=consumer_id, options=options)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def broker(make: Callable[..., SqliteBroker]) -> SqliteBroker:
    return make()


# -- URLs and errors -----------------------------------------------------------------


def test_sqlite_path_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("sqlite://") == tmp_path / "taskq.sqlite3"
    assert sqlite_path("sqlite:///sub/q.db") == tmp_path / "sub" / "q.db"
    assert sqlite_path("sqlite:////abs/q.db") == Path("/abs/q.db")


@pytest.mark.parametrize(
    "bad", ["redis://localhost", "sqlite://host/q.db", "sqlite:///:memory:", "sqlite:///q.db?x=1"]
)
def test_bad_urls_are_configuration_errors(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="sqlite:///relative/path.db"):
        sqlite_path(bad)


def test_missing_directory_is_a_clear_broker_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    broker = SqliteBroker(f"sqlite:///{missing}/q.db", consumer_id="c1")
    with pytest.raises(BrokerError, match=f"directory {missing} does not exist.*mkdir -p"):
        broker.publish(envelope(b"x"), Q)


def test_bad_options_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'lease_timeout'"):
        SqliteBroker(url, consumer_id="c1", options={"lease_timout": 5})
    with pytest.raises(ConfigurationError, match="positive number of seconds"):
        SqliteBroker(url, consumer_id="c1", options={"poll_interval": 0})


def test_damaged_file_is_a_broker_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    broker = SqliteBroker(f"sqlite:///{path}", consumer_id="c1")
    with pytest.raises(BrokerError, match=f"{path}: publish failed.*not a database"):
        broker.publish(envelope(b"x"), Q)


# -- messages ------------------------------------------------------------------------


def test_round_trip(broker: SqliteBroker, make: Callable[..., SqliteBroker]) -> None:
    sent = Envelope(
        body=b"\x00\xffbinary",
        content_type="application/x-msgpack",
        content_encoding="binary",
        headers={"task": "add", "id": "abc", "retries": 0},
        properties={"correlation_id": "abc", "reply_to": "r"},
    )
    broker.declare([])
    broker.publish(sent, Q)
    [got] = broker.fetch([Q], 10, timeout=1)
    assert got.envelope == Envelope(
        sent.body, sent.content_type, "binary", sent.headers, {**sent.properties, "priority": 0}
    )
    assert (got.queue, got.delivery_count) == (Q, 1)
    broker.ack([got])
    assert make("c2").fetch([Q], 10, timeout=0) == []


def test_fifo(broker: SqliteBroker) -> None:
    for i in range(20):
        broker.publish(envelope(b"%d" % i), Q)
    assert bodies(broker.fetch([Q], 20, timeout=1)) == [b"%d" % i for i in range(20)]


def test_higher_priority_first_then_fifo(broker: SqliteBroker) -> None:
    for name, priority in [("a", 0), ("b", 5), ("c", 9), ("d", 5), ("e", None)]:
        broker.publish(envelope(name.encode()), Q, priority=priority)
    broker.publish(envelope(b"f", priority=7), Q)  # priority from the properties
    assert bodies(broker.fetch([Q], 10, timeout=1)) == [b"c", b"f", b"b", b"d", b"a", b"e"]


def test_fetch_merges_queues_in_priority_order(broker: SqliteBroker) -> None:
    broker.publish(envelope(b"low1"), "low")
    broker.publish(envelope(b"high"), "high", priority=3)
    broker.publish(envelope(b"low2"), "low")
    broker.publish(envelope(b"other"), "other")
    got = broker.fetch(["low", "high"], 10, timeout=1)
    assert [(d.queue, d.envelope.body) for d in got] == [
        ("high", b"high"),
        ("low", b"low1"),
        ("low", b"low2"),
    ]


def test_batch_fetch(broker: SqliteBroker) -> None:
    broker.publish_many([(envelope(b"%d" % i), Q, None) for i in range(25)])
    sizes = [len(broker.fetch([Q], 10, timeout=0)) for _ in range(4)]
    assert sizes == [10, 10, 5, 0]


def test_fetch_times_out_empty(broker: SqliteBroker) -> None:
    started = time.monotonic()
    assert broker.fetch([Q], 10, timeout=0.2) == []
    assert 0.2 <= time.monotonic() - started < 1.0


def test_requeue_returns_without_counting(
    broker: SqliteBroker, make: Callable[..., SqliteBroker]
) -> None:
    broker.publish(envelope(b"x"), Q)
    broker.requeue(broker.fetch([Q], 1, timeout=1))
    [again] = make("c2").fetch([Q], 1, timeout=1)
    assert (again.envelope.body, again.delivery_count) == (b"x", 1)


def test_tags_are_unique_per_delivery(broker: SqliteBroker) -> None:
    broker.publish(envelope(b"x"), Q)
    first = broker.fetch([Q], 1, timeout=1)
    broker.requeue(first)
    second = broker.fetch([Q], 1, timeout=1)
    assert first[0].tag != second[0].tag
    broker.ack(second)
    assert broker.fetch([Q], 1, timeout=0) == []


@pytest.mark.slow
def test_expired_lease_returns_messages(make: Callable[..., SqliteBroker]) -> None:
    dead, alive = make("dead", lease_timeout=0.5), make("alive", lease_timeout=0.5)
    dead.publish(envelope(b"x"), Q)
    [lost] = dead.fetch([Q], 1, timeout=1)
    got: list[Delivery] = []

    def redelivered() -> bool:
        alive.heartbeat()
        got.extend(alive.fetch([Q], 1, timeout=0.05))
        return bool(got)

    wait_until(redelivered)
    assert (got[0].envelope.body, got[0].delivery_count) == (b"x", 2)
    dead.requeue([lost])  # too late: the message belongs to "alive" now
    assert make("third").fetch([Q], 1, timeout=0) == []


@pytest.mark.slow
def test_heartbeating_consumer_keeps_its_messages(make: Callable[..., SqliteBroker]) -> None:
    holder, other = make("holder", lease_timeout=0.3), make("other", lease_timeout=0.3)
    holder.publish(envelope(b"x"), Q)
    held = holder.fetch([Q], 1, timeout=1)
    until = time.monotonic() + 1.2  # four lease lengths
    while time.monotonic() < until:
        holder.heartbeat()
        other.heartbeat()
        assert other.fetch([Q], 1, timeout=0.05) == []
    holder.ack(held)


def test_delayed_message_is_invisible_until_eta(broker: SqliteBroker) -> None:
    eta = time.time() + 0.3
    broker.publish(envelope(b"later"), Q, eta=eta)
    broker.publish(envelope(b"now"), Q)
    assert bodies(broker.fetch([Q], 10, timeout=0)) == [b"now"]
    [later] = broker.fetch([Q], 10, timeout=5)
    assert later.envelope.body == b"later" and time.time() >= eta


def test_purge_leaves_leased_messages(broker: SqliteBroker) -> None:
    for i in range(3):
        broker.publish(envelope(b"%d" % i), Q)
    broker.publish(envelope(b"delayed"), Q, eta=time.time() + 60)
    leased = broker.fetch([Q], 1, timeout=1)
    assert broker.purge(Q) == 3
    broker.ack(leased)
    assert broker.purge(Q) == 0


# -- dead letters and malformed rows -------------------------------------------------


def test_dead_letters(broker: SqliteBroker) -> None:
    broker.publish(envelope(b"bad"), Q, priority=4)
    broker.publish(envelope(b"worse"), Q)
    for delivery in broker.fetch([Q], 2, timeout=1):
        broker.dead_letter(delivery, f"boom {delivery.envelope.body.decode()}")
    parked = broker.dead_letters()
    assert [(p.queue, p.reason, p.envelope.body) for p in parked] == [
        (Q, "boom bad", b"bad"),
        (Q, "boom worse", b"worse"),
    ]
    assert broker.fetch([Q], 10, timeout=0) == []
    assert broker.requeue_dead_letters([parked[0].id, "nonsense"]) == 1
    [back] = broker.fetch([Q], 10, timeout=1)
    assert (back.envelope.body, back.envelope.properties["priority"]) == (b"bad", 4)
    assert back.delivery_count == 1
    assert broker.requeue_dead_letters() == 1
    broker.dead_letter(back, "again")
    assert broker.purge_dead_letters() == 1
    assert broker.dead_letters() == []


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"\xff\x00 not json", "not JSON"),
        (b"[1, 2]", "a JSON list"),
        (b'{"body": 5, "content-type": "x"}', "string body"),
        (
            b'{"body": "!!", "content-type": "x", "properties": {"body_encoding": "base64"}}',
            "base64",
        ),
    ],
)
def test_malformed_row_is_delivered_for_dead_lettering(
    broker: SqliteBroker, payload: bytes, problem: str
) -> None:
    broker.declare([])
    with sqlite3.connect(broker.path) as conn:
        conn.execute(
            "INSERT INTO messages (queue, priority, payload, visible_at) VALUES (?, 0, ?, 0)",
            (Q, payload),
        )
    [got] = broker.fetch([Q], 1, timeout=1)
    assert got.envelope.content_type == MALFORMED_CONTENT_TYPE
    assert problem in got.envelope.headers["x-taskq-error"]
    assert got.envelope.body == payload
    broker.dead_letter(got, "malformed")
    [parked] = broker.dead_letters()
    assert parked.envelope.body == payload


# -- processes -----------------------------------------------------------------------

N_PER_PRODUCER = 1500


def _produce(url: str, producer: int) -> None:
    broker = SqliteBroker(url, consumer_id=f"producer-{producer}")
    items = [(envelope(b"%d-%d" % (producer, i)), Q, None) for i in range(N_PER_PRODUCER)]
    if producer == 0:
        for item in items:
            broker.publish(item[0], Q)
    else:
        for start in range(0, len(items), 50):
            broker.publish_many(items[start : start + 50])


def _consume(url: str, consumer: int, done: Any, results: Any) -> None:
    broker = SqliteBroker(url, consumer_id=f"consumer-{consumer}")
    acked: list[bytes] = []
    while True:
        # Read the flag before fetching: an empty fetch after the producers finished
        # means every message is acked or leased to a consumer that will ack it.
        finished = done.is_set()
        batch = broker.fetch([Q], 20, timeout=0.1)
        if not batch and finished:
            break
        broker.ack(batch)
        acked.extend(bodies(batch))
    results.put(acked)


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.slow
def test_processes_ack_every_message_exactly_once(url: str, method: str) -> None:
    ctx: Any = multiprocessing.get_context(method)
    done, results = ctx.Event(), ctx.Queue()
    consumers = [ctx.Process(target=_consume, args=(url, n, done, results)) for n in range(3)]
    producers = [ctx.Process(target=_produce, args=(url, n)) for n in range(2)]
    for process in consumers + producers:
        process.start()
    for process in producers:
        process.join(30)
        assert process.exitcode == 0
    done.set()
    acked = [body for _ in consumers for body in results.get(timeout=30)]
    for process in consumers:
        process.join(10)
        assert process.exitcode == 0
    expected = [b"%d-%d" % (p, i) for p in range(2) for i in range(N_PER_PRODUCER)]
    assert len(acked) == len(expected)
    assert sorted(acked) == sorted(expected)
    with sqlite3.connect(sqlite_path(url)) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (0,)


def _use_inherited(broker: SqliteBroker) -> None:
    broker.publish(envelope(b"from child"), Q)


def test_forked_child_opens_its_own_connection(broker: SqliteBroker) -> None:
    broker.publish(envelope(b"from parent"), Q)  # the parent's connection is open now
    child = multiprocessing.get_context("fork").Process(target=_use_inherited, args=(broker,))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    assert bodies(broker.fetch([Q], 10, timeout=1)) == [b"from parent", b"from child"]


class _LockedTwice:
    """A connection whose first two statements fail as a racing WAL switch does."""

    def __init__(self) -> None:
        self.calls = 0

    def execute(self, sql: str) -> None:
        self.calls += 1
        if self.calls <= 2:
            raise sqlite3.OperationalError("database is locked")


def test_wal_switch_is_retried_when_locked() -> None:
    # Several processes opening a new file at once made "PRAGMA journal_mode=WAL"
    # fail at once, without the busy timeout, in about 1 process in 100.
    conn = _LockedTwice()
    _enable_wal(conn)  # type: ignore[arg-type]
    assert conn.calls == 3


def test_the_embedded_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Issue 12, item 5: they hold task arguments and results; they were 0644."""
    from taskq import App

    old = os.umask(0o022)
    try:
        # No broker: the embedded default, here in the test's folder.
        app = App("private", embedded_path=str(tmp_path / "taskq.sqlite3"))
        app.task(name="private.add")(lambda x, y: x + y)
        app.send_task("private.add", [1, 2])
        app.require_backend().store("some-id", "SUCCESS", 3)
    finally:
        os.umask(old)
    files = sorted(p.name for p in tmp_path.iterdir())  # while open: -wal and -shm exist
    assert files == ["taskq.sqlite3", "taskq.sqlite3-shm", "taskq.sqlite3-wal"]
    assert {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in files} == {
        name: 0o600 for name in files
    }
    app.close()


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    path.touch(0o640)
    path.chmod(0o640)
    SqliteBroker(f"sqlite:///{path}", consumer_id="c").declare([])
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
