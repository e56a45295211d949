"""The result backend contract, run against every backend.

One test class, parametrized over memory, Redis and SQLite (huey's
``StorageTests`` idea). Redis tests use a unique key prefix per test and delete
only their own keys: the server is shared, so nothing here flushes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from taskq.backends import KNOWN_SCHEMES, backend_from_url
from taskq.backends.base import Backend
from taskq.backends.memory import MemoryBackend
from taskq.backends.redis import RedisBackend
from taskq.errors import BackendError, ConfigurationError, TimeoutError
from taskq.result import task_key
from tests import sql

MakeBackend = Callable[..., Backend]


def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``check()`` is true, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"condition not met within {within}s"
        time.sleep(0.02)


def delete_prefixed(url: str, prefix: str) -> None:
    """Delete this test's own Redis keys (never FLUSHDB: the server is shared)."""
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["memory", "redis", "sqlite", *(f"db+{kind}" for kind in sql.KINDS)])
def make_backend(
    request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> Iterator[MakeBackend]:
    """A factory for backends of one kind (``make_backend(expires=1)``); all closed after."""
    made: list[Backend] = []
    prefix = f"taskq-test-{unique}:"
    table = f"taskq_test_{unique}"
    if request.param == "memory":
        build: MakeBackend = partial(MemoryBackend, "memory://")
    elif request.param == "redis":
        url = request.getfixturevalue("redis_url")
        build = partial(RedisBackend, url, options={"key_prefix": prefix})
    elif request.param.startswith("db+"):
        url = sql.backend_url(request.param[3:], tmp_path)
        build = partial(backend_from_url, url, options={"table_name": table})
    else:
        sqlite = pytest.importorskip("taskq.backends.sqlite")
        build = partial(sqlite.SqliteBackend, f"sqlite:///{tmp_path / 'results.sqlite3'}")

    def make(expires: float | None = 300.0) -> Backend:
        made.append(build(expires=expires))
        return made[-1]

    yield make
    for backend in made:
        backend.close()
    if request.param == "redis":
        delete_prefixed(url, prefix)
    if request.param.startswith("db+"):
        sql.drop_table(url, table)


@pytest.fixture
def backend(make_backend: MakeBackend) -> Backend:
    return make_backend()


class TestBackendContract:
    def test_success_round_trip(self, backend: Backend, unique: str) -> None:
        stored = backend.store(unique, "SUCCESS", {"sum": 3}, extra={"name": "add"})
        meta = backend.meta(unique)
        assert meta == stored
        assert meta["status"] == "SUCCESS"
        assert meta["result"] == {"sum": 3}
        assert meta["task_id"] == unique
        assert meta["name"] == "add"
        assert meta["date_done"] is not None

    def test_failure_keeps_traceback(self, backend: Backend, unique: str) -> None:
        traceback = 'Traceback (most recent call last):\n  File "t.py"\nValueError: boom\n'
        error = {"exc_type": "ValueError", "exc_message": ["boom"]}
        backend.store(unique, "FAILURE", error, traceback=traceback)
        meta = backend.meta(unique)
        assert meta["status"] == "FAILURE"
        assert meta["result"] == error
        assert meta["traceback"] == traceback

    def test_a_late_retry_or_started_never_replaces_the_outcome(
        self, backend: Backend, unique: str
    ) -> None:
        """A retry's next attempt may finish (on another thread or worker) before the
        attempt that retried records RETRY: the outcome stays."""
        backend.store(unique, "SUCCESS", 2)
        backend.store(unique, "RETRY", {"exc_type": "Retry", "exc_message": []})
        backend.store(unique, "STARTED", {"pid": 1})
        assert (backend.meta(unique)["status"], backend.meta(unique)["result"]) == ("SUCCESS", 2)
        backend.store(unique, "FAILURE", {"exc_type": "ValueError", "exc_message": []})
        assert backend.meta(unique)["status"] == "FAILURE"  # a rerun's outcome replaces it

    def test_unknown_id_is_pending(self, backend: Backend, unique: str) -> None:
        meta = backend.meta(unique)
        assert meta["status"] == "PENDING"
        assert meta["result"] is None
        assert meta["task_id"] == unique

    def test_custom_state_is_stored_but_not_ready(self, backend: Backend, unique: str) -> None:
        backend.store(unique, "PROGRESS", {"done": 3, "total": 10})
        meta = backend.meta(unique)
        assert meta["status"] == "PROGRESS"
        assert meta["result"] == {"done": 3, "total": 10}
        assert meta["date_done"] is None
        with pytest.raises(TimeoutError):
            backend.wait_for(unique, timeout=0.2, interval=0.05)

    def test_forget(self, backend: Backend, unique: str) -> None:
        backend.store(unique, "SUCCESS", 1)
        backend.forget(unique)
        assert backend.meta(unique)["status"] == "PENDING"
        backend.forget(unique)  # forgetting twice is not an error

    @pytest.mark.slow
    def test_expiry_is_honoured(self, make_backend: MakeBackend, unique: str) -> None:
        backend = make_backend(expires=1)
        backend.store(unique, "SUCCESS", 1)
        backend.incr(f"counter-{unique}", expires=1)
        backend.set(f"kept-{unique}", b"x", None)
        assert backend.meta(unique)["status"] == "SUCCESS"

        eventually(lambda: backend.meta(unique)["status"] == "PENDING")
        eventually(lambda: backend.get(f"counter-{unique}") is None)
        assert backend.get(f"kept-{unique}") == b"x"

    def test_mget_keeps_order_and_reports_missing(self, backend: Backend, unique: str) -> None:
        backend.set(f"a-{unique}", b"1", None)
        backend.set(f"c-{unique}", b"3", None)
        keys = [f"a-{unique}", f"b-{unique}", f"c-{unique}"]
        assert backend.mget(keys) == [b"1", None, b"3"]
        assert backend.mget([]) == []

    def test_incr_is_atomic(self, backend: Backend, unique: str) -> None:
        key = f"counter-{unique}"
        seen: list[int] = []
        lock = threading.Lock()

        def count() -> None:
            values = [backend.incr(key, expires=60) for _ in range(100)]
            with lock:
                seen.extend(values)

        threads = [threading.Thread(target=count) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(seen) == list(range(1, 801))
        assert backend.incr(key, expires=60) == 801

    def test_wait_for_returns_a_stored_result(self, backend: Backend, unique: str) -> None:
        backend.store(unique, "SUCCESS", 42)
        assert backend.wait_for(unique, timeout=5)["result"] == 42

    def test_wait_for_is_woken_by_store(self, backend: Backend, unique: str) -> None:
        timer = threading.Timer(0.2, backend.store, (unique, "SUCCESS", "done"))
        started = time.monotonic()
        timer.start()
        try:
            meta = backend.wait_for(unique, timeout=10, interval=0.05)
        finally:
            timer.join()
        assert meta["result"] == "done"
        assert time.monotonic() - started < 3, "woken long after the result was stored"

    def test_wait_for_times_out(self, backend: Backend, unique: str) -> None:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=unique):
            backend.wait_for(unique, timeout=0.3, interval=0.05)
        assert 0.3 <= time.monotonic() - started < 3

    def test_many_concurrent_waiters(self, backend: Backend, unique: str) -> None:
        ids = [f"{unique}-{n}" for n in range(20)]
        waited = ids + ids[:3]  # three ids have two waiters each
        results: dict[int, Any] = {}

        def wait(slot: int, task_id: str) -> None:
            results[slot] = backend.wait_for(task_id, timeout=20, interval=0.05)["result"]

        threads = [
            threading.Thread(target=wait, args=(slot, tid)) for slot, tid in enumerate(waited)
        ]
        for thread in threads:
            thread.start()
        for task_id in ids:
            backend.store(task_id, "SUCCESS", task_id)
        for thread in threads:
            thread.join(timeout=30)
        assert results == dict(enumerate(waited))

    def test_revoked_ids_round_trip(self, backend: Backend, unique: str) -> None:
        backend.mark_revoked(f"{unique}-a", expires=60)
        backend.mark_revoked(f"{unique}-c", expires=None)
        asked = [f"{unique}-a", f"{unique}-b", f"{unique}-c"]
        assert backend.revoked(asked) == {f"{unique}-a", f"{unique}-c"}
        assert backend.revoked([]) == set()


# -- choosing a backend by URL ---------------------------------------------------------


def test_unknown_scheme_suggests_a_known_one() -> None:
    with pytest.raises(ConfigurationError) as info:
        backend_from_url("reddis://localhost:6379/0")
    assert str(info.value) == (
        "Unknown result backend 'reddis://localhost:6379/0'. Did you mean 'redis'? "
        "Known: redis, rediss, sqlite, memory, db+postgresql, db+mysql, db+sqlite."
    )


def test_url_without_scheme_is_explained() -> None:
    with pytest.raises(ConfigurationError, match="has no scheme"):
        backend_from_url("localhost:6379")


def test_error_messages_mask_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        backend_from_url("mongodb://user:hunter2@db/0")
    assert "hunter2" not in str(info.value)
    assert "user:***@db" in str(info.value)


def test_missing_backend_module_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from taskq import backends

    monkeypatch.setitem(
        backends._BACKENDS, "db", ("taskq.backends.no_such_module", "X", "sqlalchemy")
    )
    with pytest.raises(ConfigurationError, match=r"pip install 'taskq\[sqlalchemy\]'"):
        backend_from_url("db+postgresql://localhost/results")


def test_schemes_choose_their_backend() -> None:
    assert "redis" in KNOWN_SCHEMES
    assert isinstance(backend_from_url("memory://"), MemoryBackend)
    for url in ("redis://localhost:6379/0", "rediss://localhost:6380/0"):
        backend = backend_from_url(url, expires=10, options={"key_prefix": "p:"})
        assert isinstance(backend, RedisBackend)  # nothing connects until first use
        assert backend.expires == 10
        backend.close()


# -- Redis specifics ---------------------------------------------------------------------


def test_unreachable_redis_fails_fast_with_a_clear_message() -> None:
    backend = RedisBackend("redis://:hunter2@127.0.0.1:1/0")
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        backend.meta("some-id")
    with pytest.raises(BackendError):
        backend.wait_for("some-id", timeout=30)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "redis://:***@127.0.0.1:1/0" in message
    assert "hunter2" not in message
    assert "Check that Redis is running" in message
    backend.close()


def test_redis_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'key_prefix'"):
        RedisBackend("redis://localhost/0", options={"key_prefx": "x"})
    with pytest.raises(ConfigurationError, match="socket_timeout=-1"):
        RedisBackend("redis://localhost/0", options={"socket_timeout": -1})


@pytest.fixture
def redis_backend(redis_url: str, unique: str) -> Iterator[RedisBackend]:
    backend = RedisBackend(redis_url, expires=300, options={"key_prefix": f"taskq-test-{unique}:"})
    yield backend
    backend.close()
    delete_prefixed(redis_url, f"taskq-test-{unique}:")


def numsub(client: redis.Redis, channel: str) -> int:
    return int(dict(client.pubsub_numsub(channel))[channel.encode()])


def listener_address(backend: RedisBackend) -> str:
    """The client address Redis sees for the backend's shared pub/sub connection.

    Reaches into private state: only the tests of the listener itself do this.
    """
    listener = backend._listener
    assert listener is not None
    conn: Any = listener._conn
    host, port = conn._sock.getsockname()[:2]
    return f"{host}:{port}"


def test_redis_ready_state_is_published_on_its_prefixed_key(
    redis_backend: RedisBackend, redis_url: str, unique: str
) -> None:
    key = f"taskq-test-{unique}:{task_key(unique)}"
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(key)
    try:
        redis_backend.store(unique, "STARTED", None)  # not ready: not published
        redis_backend.store(unique, "SUCCESS", 7)
        message = None
        deadline = time.monotonic() + 5
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
        assert message is not None
        assert message["data"] == client.get(key)
        assert redis_backend.decode(message["data"])["result"] == 7
    finally:
        pubsub.close()
        client.close()


def test_redis_waiter_survives_a_lost_pubsub_connection(
    redis_backend: RedisBackend, redis_url: str, unique: str
) -> None:
    channel = f"taskq-test-{unique}:{task_key(unique)}"
    client = redis.Redis.from_url(redis_url)
    result: dict[str, Any] = {}
    waiter = threading.Thread(
        target=lambda: result.update(redis_backend.wait_for(unique, timeout=30))
    )
    waiter.start()
    eventually(lambda: numsub(client, channel) == 1)

    # Reaching into the listener: kill its connection on the server, and store the result
    # while it cannot reconnect yet, so the publish reaches nobody and only the re-read
    # after re-subscribing can find it.
    listener = redis_backend._listener
    assert listener is not None
    with listener._lock:
        client.client_kill_filter(_type=None, addr=listener_address(redis_backend))
        eventually(lambda: numsub(client, channel) == 0)
        redis_backend.store(unique, "SUCCESS", "after reconnect")

    waiter.join(timeout=15)
    assert result.get("result") == "after reconnect"
    # The waiter left: its channel is unsubscribed, not leaked.
    eventually(lambda: numsub(client, channel) == 0)
    client.close()


def test_redis_shares_one_pubsub_connection_between_waiters(
    redis_backend: RedisBackend, redis_url: str, unique: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    ids = [f"{unique}-{n}" for n in range(10)]
    channels = [f"taskq-test-{unique}:{task_key(tid)}" for tid in ids]
    threads = [threading.Thread(target=redis_backend.wait_for, args=(tid, 30)) for tid in ids]
    for thread in threads:
        thread.start()
    eventually(lambda: all(numsub(client, ch) == 1 for ch in channels))
    local = listener_address(redis_backend)
    ours = [c for c in client.client_list(_type="pubsub") if c["addr"] == local]
    # Each key's own channel, and the shared channel (taskq-results).
    assert len(ours) == 1 and int(ours[0]["sub"]) == len(ids) + 1
    for tid in ids:
        redis_backend.store(tid, "SUCCESS", None)
    for thread in threads:
        thread.join(timeout=15)
    assert not any(thread.is_alive() for thread in threads)
    client.close()


def test_redis_close_stops_waiters_and_the_backend_reopens_on_use(
    redis_backend: RedisBackend, redis_url: str, unique: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    errors: list[BackendError] = []

    def wait() -> None:
        try:
            redis_backend.wait_for(unique, timeout=30)
        except BackendError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    eventually(lambda: numsub(client, f"taskq-test-{unique}:{task_key(unique)}") == 1)
    redis_backend.close()
    waiter.join(timeout=5)
    assert len(errors) == 1 and "closed" in str(errors[0])

    timer = threading.Timer(0.2, redis_backend.store, (unique, "SUCCESS", 1))
    timer.start()
    assert redis_backend.wait_for(unique, timeout=10)["result"] == 1
    timer.join()
    client.close()


def _messages_until_marker(pubsub: Any, client: redis.Redis, marker_channel: str) -> list[Any]:
    """Every message the pattern subscription saw before our own marker publish."""
    client.publish(marker_channel, b"marker")
    seen: list[Any] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)
        if message is None:
            continue
        if message["channel"] == marker_channel.encode():
            return seen
        seen.append(message)
    raise AssertionError("the marker never arrived")


def test_redis_results_are_published_only_where_someone_waits(
    redis_backend: RedisBackend, redis_url: str, unique: str
) -> None:
    """A batch of results with nobody waiting is stored and published nowhere (a
    pattern subscription counts as nobody in PUBSUB NUMSUB, so it sees what would be
    sent); one with a subscriber on its key's channel (as Celery's clients wait) is
    published there, and only there."""
    prefix = f"taskq-test-{unique}:"
    client = redis.Redis.from_url(redis_url)
    spy = client.pubsub(ignore_subscribe_messages=True)
    spy.psubscribe(f"{prefix}*")
    waiter = client.pubsub(ignore_subscribe_messages=True)
    try:
        ids = [f"{unique}-{n}" for n in range(3)]
        items = [
            (task_key(i), redis_backend.encode({"status": "SUCCESS", "result": i})) for i in ids
        ]
        redis_backend.store_ready_many(items)
        assert _messages_until_marker(spy, client, f"{prefix}marker") == []
        assert [redis_backend.meta(i)["result"] for i in ids] == ids
        assert 0 < client.pttl(f"{prefix}{task_key(ids[0])}") <= 300_000

        watched = f"{prefix}{task_key(ids[1])}"
        waiter.subscribe(watched)
        eventually(lambda: numsub(client, watched) == 1)
        redis_backend.store_ready_many(items)
        seen = _messages_until_marker(spy, client, f"{prefix}marker")
        assert [(m["channel"], m["data"]) for m in seen] == [(watched.encode(), items[1][1])]
    finally:
        spy.close()
        waiter.close()
        client.close()


def test_redis_waiters_share_one_channel_and_wake_on_a_batch(
    redis_backend: RedisBackend, redis_url: str, unique: str
) -> None:
    """Waiters in a process listen on the shared channel: a batch written in one call
    wakes each of them, big values (announced without them) included."""
    client = redis.Redis.from_url(redis_url)
    shared = f"taskq-test-{unique}:taskq-results"
    ids = [f"{unique}-{n}" for n in range(4)]
    got: dict[str, Any] = {}
    threads = [
        threading.Thread(
            target=lambda tid=tid: got.update({tid: redis_backend.wait_for(tid, 30)["result"]})
        )
        for tid in ids
    ]
    try:
        for thread in threads:
            thread.start()
        eventually(lambda: numsub(client, shared) == 1)
        big = "x" * 20_000  # more than INLINE_MAX: the waiter reads the key
        values = [big if n == 0 else n for n in range(len(ids))]
        items = [
            (task_key(tid), redis_backend.encode({"status": "SUCCESS", "result": value}))
            for tid, value in zip(ids, values, strict=True)
        ]
        redis_backend.store_ready_many(items)
        for thread in threads:
            thread.join(timeout=15)
        assert got == dict(zip(ids, values, strict=True))
    finally:
        client.close()


def test_store_ready_many_writes_every_result(backend: Backend, unique: str) -> None:
    """A worker's batch (``taskq.worker.results``): each result readable after one call,
    a key given twice keeping its last value."""
    ids = [f"{unique}-{n}" for n in range(5)]
    items = [
        (task_key(tid), backend.encode(backend.state_meta(tid, "SUCCESS", n)))
        for n, tid in enumerate(ids)
    ]
    items.append((task_key(ids[0]), backend.encode(backend.state_meta(ids[0], "SUCCESS", 99))))
    backend.store_ready_many(items)
    assert [backend.meta(tid)["result"] for tid in ids] == [99, 1, 2, 3, 4]
    assert backend.wait_for(ids[1], timeout=5)["status"] == "SUCCESS"


def test_redis_waiter_ignores_what_others_publish_on_the_shared_channel(
    redis_backend: RedisBackend, redis_url: str, unique: str
) -> None:
    """Garbage, or another task's result announced under this key, neither ends the
    listener nor answers the waiter: it reads its own key."""
    client = redis.Redis.from_url(redis_url)
    shared = f"taskq-test-{unique}:taskq-results"
    key = f"taskq-test-{unique}:{task_key(unique)}".encode()
    got: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: got.update(redis_backend.wait_for(unique, 30)))
    try:
        waiter.start()
        eventually(lambda: numsub(client, shared) == 1)
        client.publish(shared, b"not a batch")
        other = redis_backend.encode({"status": "SUCCESS", "result": "other", "task_id": "x"})
        client.publish(shared, b"%d:%s%d:%s" % (len(key), key, len(other), other))
        redis_backend.store(unique, "SUCCESS", "mine")
        waiter.join(timeout=15)
        assert got.get("result") == "mine"
    finally:
        client.close()
