"""The embedded SQLite result backend."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskq.backends.sqlite import SqliteBackend
from taskq.broker.base import Envelope
from taskq.broker.sqlite import SqliteBroker
from taskq.errors import BackendError, ConfigurationError, TimeoutError


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.sqlite3'}"


@pytest.fixture
def backend(url: str) -> Iterator[SqliteBackend]:
    backend = SqliteBackend(url)
    yield backend
    backend.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)


def test_store_meta_forget(backend: SqliteBackend) -> None:
    assert backend.meta("t1")["status"] == "PENDING"
    backend.store("t1", "SUCCESS", {"sum": 3}, extra={"name": "add", "retries": 0})
    meta = SqliteBackend(backend.url).meta("t1")  # another instance sees it
    assert (meta["status"], meta["result"], meta["name"], meta["task_id"]) == (
        "SUCCESS",
        {"sum": 3},
        "add",
        "t1",
    )
    assert meta["date_done"] is not None
    backend.forget("t1")
    assert backend.meta("t1")["status"] == "PENDING"


def test_primitives(backend: SqliteBackend) -> None:
    backend.set("a", b"1", None)
    backend.set("b", b"\x00\xff", None)
    backend.set("a", b"2", None)
    assert backend.get("a") == b"2"
    assert backend.mget(["b", "missing", "a"]) == [b"\x00\xff", None, b"2"]
    assert backend.mget([]) == []
    backend.delete("a")
    backend.delete("never-there")
    assert backend.get("a") is None


def test_expired_values_read_as_missing_and_are_cleaned_up(url: str) -> None:
    backend = SqliteBackend(url)
    backend.set("short", b"v", 0.2)
    backend.set("kept", b"v", None)
    assert backend.get("short") == b"v"
    wait_until(lambda: backend.get("short") is None)
    assert backend.mget(["short", "kept"]) == [None, b"v"]
    SqliteBackend(url).set("other", b"v", None)  # a fresh instance cleans up on its first write
    with sqlite3.connect(backend.path) as conn:
        keys = {key for (key,) in conn.execute("SELECT key FROM kv")}
    assert keys == {"kept", "other"}


def test_result_expires_applies_to_stored_results(url: str) -> None:
    backend = SqliteBackend(url, expires=0.2)
    backend.store("t1", "SUCCESS", 1)
    assert backend.meta("t1")["status"] == "SUCCESS"
    wait_until(lambda: backend.meta("t1")["status"] == "PENDING")


def test_incr_counts_and_keeps_or_sets_expiry(backend: SqliteBackend) -> None:
    assert [backend.incr("n", None) for _ in range(3)] == [1, 2, 3]
    assert backend.get("n") == b"3"  # decimal text, as Redis stores counters
    backend.incr("e", 0.2)
    assert backend.incr("e", None) == 2  # keeps the running deadline
    wait_until(lambda: backend.get("e") is None)
    assert backend.incr("e", None) == 1  # an expired counter starts again


def test_incr_from_threads_gives_distinct_values(backend: SqliteBackend) -> None:
    values: list[int] = []
    lock = threading.Lock()

    def count() -> None:
        mine = [backend.incr("shared", 3600) for _ in range(50)]
        with lock:
            values.extend(mine)

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(values) == list(range(1, 401))


def _count(url: str, results: Any) -> None:
    backend = SqliteBackend(url)
    results.put([backend.incr("shared", None) for _ in range(100)])


@pytest.mark.slow
def test_incr_from_processes_gives_distinct_values(url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    processes = [ctx.Process(target=_count, args=(url, results)) for _ in range(3)]
    for process in processes:
        process.start()
    values = [value for _ in processes for value in results.get(timeout=30)]
    for process in processes:
        process.join(10)
        assert process.exitcode == 0
    assert sorted(values) == list(range(1, 301))


def test_wait_for_returns_when_another_thread_stores(url: str) -> None:
    waiter, worker = SqliteBackend(url), SqliteBackend(url)
    polled = threading.Event()
    read = waiter.get

    def get_and_signal(key: str) -> bytes | None:
        polled.set()
        return read(key)

    waiter.get = get_and_signal  # type: ignore[method-assign]

    def finish() -> None:
        polled.wait(10)  # store only once the waiter is polling
        worker.store("t1", "STARTED", None)
        worker.store("t1", "SUCCESS", 42)

    thread = threading.Thread(target=finish)
    thread.start()
    meta = waiter.wait_for("t1", timeout=10, interval=0.01)
    thread.join(10)
    assert (meta["status"], meta["result"]) == ("SUCCESS", 42)


def test_wait_for_times_out(backend: SqliteBackend) -> None:
    with pytest.raises(TimeoutError, match="t1 not ready"):
        backend.wait_for("t1", timeout=0.1, interval=0.01)


def test_revoked_ids(backend: SqliteBackend) -> None:
    backend.mark_revoked("a", None)
    backend.mark_revoked("b", 0.2)
    assert backend.revoked(["a", "b", "c"]) == {"a", "b"}
    assert backend.revoked([]) == set()
    wait_until(lambda: backend.revoked(["a", "b"]) == {"a"})


def test_shares_the_default_file_with_the_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    broker = SqliteBroker("sqlite://", consumer_id="c1")
    backend = SqliteBackend("sqlite://")
    broker.publish(Envelope(b"x", "application/json"), "q")
    backend.store("t1", "SUCCESS", 1)
    assert backend.path == broker.path == tmp_path / "taskq.sqlite3"
    with sqlite3.connect(backend.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (1,)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="takes no options"):
        SqliteBackend(f"sqlite:///{tmp_path / 'r.db'}", options={"visibility_timeout": 5})
    with pytest.raises(ConfigurationError, match="not a sqlite URL"):
        SqliteBackend("redis://localhost")
    missing = SqliteBackend(f"sqlite:///{tmp_path / 'nope' / 'r.db'}")
    with pytest.raises(BackendError, match="does not exist"):
        missing.get("k")
