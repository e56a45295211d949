from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis

from taskq import App
from taskq.beat.locks import BeatLock, LocalBeatLock, RedisBeatLock
from taskq.beat.scheduler import (
    Entry,
    KeyValueStore,
    MemoryStore,
    Scheduler,
    ScheduleStore,
    entries_from_config,
    run_beat,
    shared_lock,
)
from taskq.errors import BackendError, ConfigurationError
from taskq.schedules import crontab, every, solar

UTC = timezone.utc
T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class DictBackend:
    """The result backend primitives KeyValueStore uses, over a dict."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def set(self, key: str, value: bytes, expires: float | None) -> None:
        assert isinstance(value, bytes)
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


class Recorder:
    """A ``send`` that records (entry name, the time the test is at)."""

    def __init__(self) -> None:
        self.now: datetime | None = None
        self.sent: list[tuple[str, datetime | None]] = []

    def __call__(self, entry: Entry) -> None:
        self.sent.append((entry.name, self.now))


def make(
    entries: list[Entry],
    send: Any = None,
    store: ScheduleStore | None = None,
    **kwargs: Any,
) -> Scheduler:
    return Scheduler(
        entries,
        send=send or Recorder(),
        store=store if store is not None else MemoryStore(),
        tz=UTC,
        **kwargs,
    )


# -- ticking with a fake clock -----------------------------------------------------------


def test_tick_sends_due_entries_and_returns_the_sleep_until_the_next() -> None:
    send = Recorder()
    ten = Entry("ten", "proj.tasks.ten", every(10))
    minutely = Entry("minutely", "proj.tasks.minutely", crontab(minute="*"))
    beat = make([ten, minutely], send, max_interval=100)

    assert beat.tick(at(5)) == 10  # first tick: intervals count from here; nothing due
    assert send.sent == []
    assert beat.tick(at(14)) == pytest.approx(1)
    assert beat.tick(at(15)) == 10
    assert send.sent == [("ten", None)]
    assert ten.last_run_at == at(15) and ten.total_run_count == 1
    # 25, 35, 45 and 55 are due: one run, stamped with the latest; minutely is next.
    assert beat.tick(at(55)) == 5
    assert send.sent[-1] == ("ten", None) and len(send.sent) == 2
    assert ten.last_run_at == at(55)
    assert beat.tick(at(60)) == 5
    assert [name for name, _ in send.sent] == ["ten", "ten", "minutely"]
    assert minutely.last_run_at == at(60)


def test_tick_caps_the_sleep_at_max_interval_and_a_lock_ttl_third() -> None:
    daily = Entry("daily", "t", crontab(0, 4))
    assert make([daily], max_interval=5).tick(at(0)) == 5
    assert make([], max_interval=7).tick(at(0)) == 7
    locked = make([daily], lock=LocalBeatLock(), max_interval=60, lease_timeout=30)
    assert locked.tick(at(0)) == 10


def test_clock_is_used_when_no_time_is_given() -> None:
    clock_times = iter([at(0), at(31)])
    send = Recorder()
    beat = make([Entry("e", "t", every(30))], send, clock=lambda: next(clock_times))
    beat.tick()
    beat.tick()
    assert [name for name, _ in send.sent] == ["e"]


def test_missed_runs_catch_up_once_then_continue_from_now() -> None:
    send = Recorder()
    store = MemoryStore()
    store.save("minutely", at(0), 7)
    store.save("ten", at(0), 3)
    minutely = Entry("minutely", "t", crontab(minute="*"))
    ten = Entry("ten", "t", every(10))
    beat = make([minutely, ten], send, store, max_interval=100)

    # Three hours of downtime: 180 minutely runs and 1080 interval runs were missed.
    assert beat.tick(at(3 * 3600 + 25)) == 5
    assert sorted(name for name, _ in send.sent) == ["minutely", "ten"]
    assert minutely.last_run_at == at(3 * 3600)
    assert ten.last_run_at == at(3 * 3600 + 20)
    assert (minutely.total_run_count, ten.total_run_count) == (8, 4)
    assert beat.tick(at(3 * 3600 + 29)) == 1
    assert len(send.sent) == 2
    beat.tick(at(3 * 3600 + 30))
    beat.tick(at(3 * 3600 + 60))
    assert [name for name, _ in send.sent[2:]] == ["ten", "minutely", "ten"]


def test_crontab_entries_use_the_scheduler_timezone() -> None:
    send = Recorder()
    ny = ZoneInfo("America/New_York")
    entry = Entry("spring", "t", crontab(30, 2))  # 02:30 does not exist on 2026-03-08
    beat = Scheduler([entry], send=send, store=MemoryStore(), tz=ny)
    beat.tick(datetime(2026, 3, 8, 1, 59, tzinfo=ny))
    sleep = beat.tick(datetime(2026, 3, 8, 1, 59, 59, tzinfo=ny))
    assert sleep == 1  # 03:00 EDT is one real second after 01:59:59 EST
    beat.tick(datetime(2026, 3, 8, 3, 0, tzinfo=ny))
    assert len(send.sent) == 1
    assert entry.last_run_at == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)


def test_solar_entries() -> None:
    send = Recorder()
    entry = Entry("dawn", "t", solar("sunrise", 51.5074, -0.1278))
    beat = make([entry], send, max_interval=1e9)
    midnight = datetime(2024, 6, 21, 0, 0, tzinfo=UTC)
    sleep = beat.tick(midnight)
    sunrise = midnight + timedelta(seconds=sleep)
    assert sunrise.strftime("%H:%M") == "03:43"  # 04:43 BST
    beat.tick(sunrise)
    assert len(send.sent) == 1


def test_a_failing_send_is_logged_and_retried_next_tick(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def flaky(entry: Entry) -> None:
        calls.append(entry.name)
        if len(calls) == 1:
            raise ConnectionError("broker down")

    entry = Entry("e", "proj.t", every(10))
    other = Entry("other", "proj.o", every(10))
    beat = make([entry, other], flaky, lock=LocalBeatLock())
    beat.tick(at(0))
    with caplog.at_level(logging.ERROR, logger="taskq.beat"):
        beat.tick(at(10))
    assert "e (proj.t) failed" in caplog.text and "broker down" in caplog.text
    assert calls == ["e", "other"]  # one failure does not stop the other entries
    assert entry.last_run_at is None and entry.total_run_count == 0
    beat.tick(at(11))  # retried: the claim taken before the failure is reused
    assert calls == ["e", "other", "e"]
    assert entry.last_run_at == at(10) and entry.total_run_count == 1


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make([]).tick(datetime(2026, 1, 1))


def test_duplicate_names_and_bad_intervals_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="Two beat entries are named 'a'"):
        make([Entry("a", "t", every(1)), Entry("a", "u", every(2))])
    with pytest.raises(ConfigurationError, match="max_interval must be positive"):
        make([], max_interval=0)
    with pytest.raises(ValueError, match="e last_run_at must be timezone-aware"):
        make([Entry("e", "t", every(1), last_run_at=datetime(2026, 1, 1))])


# -- persistence -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "key-value"])
def test_progress_survives_a_restart(kind: str) -> None:
    backend = DictBackend()
    store: ScheduleStore = MemoryStore() if kind == "memory" else KeyValueStore(backend)
    config = {
        "hourly": {"task": "proj.hourly", "schedule": crontab(minute=0)},
        "often": {"task": "proj.often", "schedule": 600.0},
    }
    first = Recorder()
    beat = make(entries_from_config(config), first, store)
    beat.tick(at(1))  # "often" is due at 601, 1201, ...
    beat.tick(at(601))
    beat.tick(at(3600))  # hourly at 3600, and often once for 1201..3001
    assert [name for name, _ in first.sent] == ["often", "hourly", "often"]

    # A restart: nothing runs again, and the timetable carries on where it was.
    second = Recorder()
    restarted = make(entries_from_config(config), second, store)
    restarted.tick(at(3600.5))
    assert second.sent == []
    restarted.tick(at(3601))
    assert second.sent == [("often", None)]
    assert restarted.entries["often"].total_run_count == 3
    assert restarted.entries["hourly"].last_run_at == at(3600)


def test_key_value_store_layout_and_round_trip() -> None:
    backend = DictBackend()
    store = KeyValueStore(backend, key_prefix="p-")
    store.save("a", at(0), 1)
    store.save("b", at(60).astimezone(timezone(timedelta(hours=2))), 2)
    store.save("a", at(120), 3)
    assert json.loads(backend.data["p-entries"]) == ["a", "b"]
    assert json.loads(backend.data["p-entry-a"]) == {
        "last_run_at": "2026-05-01T12:02:00+00:00",
        "total_run_count": 3,
    }
    fresh = KeyValueStore(backend, key_prefix="p-")
    assert fresh.load() == {
        "a": {"last_run_at": at(120), "total_run_count": 3},
        "b": {"last_run_at": at(60), "total_run_count": 2},
    }
    fresh.save("c", at(0), 1)  # a second process adds to the index, keeping the others
    assert json.loads(backend.data["p-entries"]) == ["a", "b", "c"]


def test_key_value_store_ignores_unreadable_state(caplog: pytest.LogCaptureFixture) -> None:
    backend = DictBackend()
    store = KeyValueStore(backend)
    store.save("good", at(0), 1)
    store.save("bad", at(0), 1)
    store.save("naive", at(0), 1)
    backend.data["taskq-beat-entry-bad"] = b"{not json"
    backend.data["taskq-beat-entry-naive"] = (
        b'{"last_run_at": "2026-01-01T00:00:00", "total_run_count": 1}'
    )
    with caplog.at_level(logging.WARNING, logger="taskq.beat"):
        assert list(store.load()) == ["good"]
    assert "'bad'" in caplog.text and "'naive'" in caplog.text
    backend.data["taskq-beat-entries"] = b'{"oops": 1}'
    assert store.load() == {}


# -- configuration -----------------------------------------------------------------------


def test_entries_from_config_accepts_celery_beat_schedule() -> None:
    entries = entries_from_config(
        {
            "add-every-30": {"task": "proj.tasks.add", "schedule": 30.0, "args": (16, 16)},
            "td": {"task": "proj.tasks.t", "schedule": timedelta(minutes=5)},
            "morning": {
                "task": "proj.tasks.report",
                "schedule": crontab(hour=7, minute=30, day_of_week=1),
                "kwargs": {"to": "ops"},
                "options": {"queue": "reports", "expires": 60},
            },
            "from-file": {
                "task": "proj.tasks.f",
                "schedule": {"type": "crontab", "minute": "*/15"},
                "args": [1],
            },
        }
    )
    by_name = {e.name: e for e in entries}
    assert by_name["add-every-30"].schedule == every(30)
    assert by_name["add-every-30"].args == (16, 16)
    assert by_name["td"].schedule == every(300)
    assert by_name["morning"].kwargs == {"to": "ops"}
    assert by_name["morning"].options == {"queue": "reports", "expires": 60}
    assert by_name["from-file"].schedule == crontab(minute="*/15")
    assert by_name["from-file"].args == (1,)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"schedule": 5}, "beat_schedule['job'] needs \"task\""),
        ({"task": "", "schedule": 5}, "beat_schedule['job'] needs \"task\""),
        ({"task": "t"}, "beat_schedule['job'] needs \"schedule\""),
        ({"task": "t", "schedule": 5, "kwarg": {}}, "unknown key 'kwarg'. Did you mean 'kwargs'?"),
        ({"task": "t", "schedule": 5, "relative": True}, "unknown key 'relative'"),
        ({"task": "t", "schedule": "5"}, "beat_schedule['job']: A schedule must be"),
        ({"task": "t", "schedule": {"type": "cron"}}, "Unknown schedule type 'cron'"),
        ({"task": "t", "schedule": 5, "args": 1}, '"args" must be a list or tuple'),
        ({"task": "t", "schedule": 5, "kwargs": [1]}, "'kwargs' must be a dict"),
        ({"task": "t", "schedule": 5, "options": "q"}, "'options' must be a dict"),
    ],
)
def test_entries_from_config_errors_name_the_entry(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        entries_from_config({"job": spec})
    assert message in str(info.value)
    assert "beat_schedule['job']" in str(info.value)


# -- the loop ----------------------------------------------------------------------------


class RecordingLock(LocalBeatLock):
    def __init__(self) -> None:
        super().__init__()
        self.released: list[str] = []

    def release(self, owner: str) -> None:
        self.released.append(owner)


def test_run_beat_logs_like_celery_and_releases_the_lock(caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    lock = RecordingLock()
    entry = Entry("add-every-30", "proj.tasks.add", every(30), last_run_at=at(-60))
    beat = make([entry], lambda e: stop.set(), lock=lock, owner="me", clock=lambda: at(0))
    with caplog.at_level(logging.INFO, logger="taskq.beat"):
        run_beat(beat, stop)  # returns because sending sets ``stop``
    assert "Scheduler: Sending due task add-every-30 (proj.tasks.add)" in caplog.messages
    assert lock.released == ["me"]


def test_run_beat_survives_a_failing_tick(caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    calls: list[int] = []

    def clock() -> datetime:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("clock broke")
        stop.set()
        return at(0)

    beat = make([], clock=clock, max_interval=0.01)
    with caplog.at_level(logging.ERROR, logger="taskq.beat"):
        run_beat(beat, stop)
    assert "tick failed" in caplog.text and "clock broke" in caplog.text


# -- locks -------------------------------------------------------------------------------


def test_local_lock_claims_each_tick_once_until_its_ttl() -> None:
    now = [100.0]
    lock = LocalBeatLock(clock=lambda: now[0])
    assert lock.acquire_or_renew("anyone", 30) is True
    assert lock.claim_tick("e", "2026-05-01T12:00:00+00:00", 10) is True
    assert lock.claim_tick("e", "2026-05-01T12:00:00+00:00", 10) is False
    assert lock.claim_tick("other", "2026-05-01T12:00:00+00:00", 10) is True
    now[0] += 11
    assert lock.claim_tick("e", "2026-05-01T12:00:00+00:00", 10) is True


@pytest.fixture
def lock_prefix(redis_url: str, unique: str) -> Iterator[str]:
    prefix = f"taskq-test-{unique}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*"):  # only this test's keys; never flush
        client.delete(key)
    client.close()


def test_redis_lock_only_the_owner_renews_or_releases(redis_url: str, lock_prefix: str) -> None:
    lock = RedisBeatLock(redis_url, key_prefix=lock_prefix)
    try:
        assert lock.acquire_or_renew("a", 30) is True
        assert lock.holder() == "a"
        assert lock.acquire_or_renew("b", 30) is False
        lock.release("b")  # not the owner: no effect
        assert lock.holder() == "a"
        assert lock.acquire_or_renew("a", 30) is True
        lock.release("a")
        assert lock.holder() is None
        assert lock.acquire_or_renew("b", 30) is True
        assert lock.claim_tick("e", "2026-05-01T12:00:00+00:00", 30) is True
        assert lock.claim_tick("e", "2026-05-01T12:00:00+00:00", 30) is False
        assert lock.claim_tick("e", "2026-05-01T12:01:00+00:00", 30) is True
    finally:
        lock.close()


def test_redis_lock_lease_expires_when_not_renewed(redis_url: str, lock_prefix: str) -> None:
    lock = RedisBeatLock(redis_url, key_prefix=lock_prefix)
    try:
        assert lock.acquire_or_renew("a", 0.3)
        deadline = time.monotonic() + 5
        while not lock.acquire_or_renew("b", 0.3):
            assert time.monotonic() < deadline, "the lease never expired"
            time.sleep(0.02)
        assert lock.holder() == "b"
        assert lock.acquire_or_renew("a", 0.3) is False  # the old owner cannot take it back
    finally:
        lock.close()


def test_projects_apart_by_key_prefix_have_a_lease_each(redis_url: str, lock_prefix: str) -> None:
    apps = [
        App(
            name, broker=redis_url, broker_transport_options={"key_prefix": f"{lock_prefix}{name}:"}
        )
        for name in ("one", "two")
    ]
    locks = [shared_lock(app) for app in apps]
    try:
        assert locks[0] is not None and locks[1] is not None
        assert locks[0].acquire_or_renew("beat-of-one", 30)
        assert locks[1].acquire_or_renew("beat-of-two", 30), "one project's beat blocked the other"
        assert locks[0].holder() == "beat-of-one" and locks[1].holder() == "beat-of-two"
    finally:
        for lock in locks:
            if lock is not None:
                lock.close()
    assert shared_lock(App("local", broker="memory://")) is None


def test_redis_lock_errors_are_backend_errors_without_the_password() -> None:
    lock = RedisBeatLock("redis://:s3cret@127.0.0.1:1/0")  # nothing listens on port 1
    with pytest.raises(BackendError) as info:
        lock.acquire_or_renew("a", 1)
    assert "127.0.0.1:1" in str(info.value) and "s3cret" not in str(info.value)
    with pytest.raises(ConfigurationError, match="Unsupported Redis URL scheme .nosuch."):
        RedisBeatLock("nosuch://host")


def test_an_unreachable_lock_means_standing_by(caplog: pytest.LogCaptureFixture) -> None:
    send = Recorder()
    lock = RedisBeatLock("redis://127.0.0.1:1/0")
    beat = make([Entry("e", "t", every(1), last_run_at=at(-10))], send, lock=lock)
    with caplog.at_level(logging.ERROR, logger="taskq.beat"):
        beat.tick(at(0))
    assert send.sent == [] and not beat.is_leader
    assert "cannot reach the beat lock" in caplog.text


# -- high availability: two beats, one real Redis ---------------------------------------


class Cluster:
    """Two schedulers sharing a RedisBeatLock prefix, driven through the same times."""

    def __init__(self, redis_url: str, prefix: str, shared_store: bool) -> None:
        self.sent: list[tuple[str, str, int]] = []  # (beat, entry, slot)
        self.slot = 0
        self.locks = [RedisBeatLock(redis_url, key_prefix=prefix) for _ in range(2)]
        store = MemoryStore()
        self.beats = {
            name: Scheduler(
                entries_from_config(
                    {
                        "minutely": {"task": "proj.m", "schedule": crontab(minute="*")},
                        "interval": {"task": "proj.i", "schedule": 60},
                    }
                ),
                send=lambda entry, name=name: self.sent.append((name, entry.name, self.slot)),  # type: ignore[misc]
                store=store if shared_store else MemoryStore(),
                tz=UTC,
                lock=lock,
                lease_timeout=1.0,
                owner=name,
            )
            for name, lock in zip("ab", self.locks, strict=True)
        }

    def time(self, slot: int) -> datetime:
        # Ticks come a second after each minute; the interval entry is anchored at
        # slot 0's tick, so both entries are due at every slot's tick.
        return T0 + timedelta(minutes=slot, seconds=1)

    def tick(self, beat: str, slot: int) -> None:
        self.slot = slot
        self.beats[beat].tick(self.time(slot))

    def poll(self, beat: str, slot: int, until: Any) -> None:
        deadline = time.monotonic() + 10
        while True:
            self.tick(beat, slot)
            if until():
                return
            assert time.monotonic() < deadline, "the standby never took over"
            time.sleep(0.05)

    def slots(self) -> dict[str, list[int]]:
        return {
            entry: [slot for _, name, slot in self.sent if name == entry]
            for entry in ("minutely", "interval")
        }

    def close(self) -> None:
        for lock in self.locks:
            lock.close()


@pytest.mark.parametrize("shared_store", [True, False])
def test_ha_one_send_per_tick_and_a_clean_takeover(
    redis_url: str, lock_prefix: str, shared_store: bool
) -> None:
    cluster = Cluster(redis_url, lock_prefix, shared_store)
    try:
        for slot in range(5):
            cluster.tick("a", slot)
            cluster.tick("b", slot)
        assert cluster.beats["a"].is_leader and not cluster.beats["b"].is_leader
        assert {beat for beat, _, _ in cluster.sent} == {"a"}

        # a dies without releasing. b cannot send until a's lease runs out.
        died = time.monotonic()
        sent_before = len(cluster.sent)
        cluster.tick("b", 5)
        assert len(cluster.sent) == sent_before and not cluster.beats["b"].is_leader
        cluster.poll("b", 5, lambda: len(cluster.sent) > sent_before)
        assert time.monotonic() - died >= 0.5  # it waited for the lease (1 s ttl)
        for slot in range(6, 9):
            cluster.tick("b", slot)

        # a comes back (it was only paused): it stands by and sends nothing.
        cluster.tick("a", 8)
        assert not cluster.beats["a"].is_leader

        # Without a shared store b's interval timetable is its own, anchored at its
        # first tick: the same as a's here, so the handover is exact either way.
        expected = list(range(1, 9))
        assert cluster.slots() == {"minutely": expected, "interval": expected}
        senders = [beat for beat, _, slot in cluster.sent]
        assert senders == ["a"] * 8 + ["b"] * 8
    finally:
        cluster.close()


def test_ha_takeover_right_after_a_send_does_not_send_again(
    redis_url: str, lock_prefix: str
) -> None:
    cluster = Cluster(redis_url, lock_prefix, shared_store=False)
    try:
        for slot in range(4):
            cluster.tick("a", slot)
            cluster.tick("b", slot)
        cluster.tick("a", 4)  # a sends slot 4, then dies before b ticks slot 4
        sent_before = len(cluster.sent)
        cluster.poll("b", 4, lambda: cluster.beats["b"].is_leader)
        assert len(cluster.sent) == sent_before  # slot 4 was claimed by a
        cluster.tick("b", 5)
        assert cluster.slots() == {"minutely": [1, 2, 3, 4, 5], "interval": [1, 2, 3, 4, 5]}
        assert [b for b, _, s in cluster.sent if s == 5] == ["b", "b"]
    finally:
        cluster.close()


class AlwaysLeader:
    """A lock whose lease every beat believes it holds (two beats overlapping during a
    takeover), with the real per-tick claims."""

    def __init__(self, inner: RedisBeatLock) -> None:
        self.inner = inner

    def acquire_or_renew(self, owner: str, ttl: float) -> bool:
        return True

    def release(self, owner: str) -> None:
        pass

    def claim_tick(self, name: str, due_iso: str, ttl: float) -> bool:
        return self.inner.claim_tick(name, due_iso, ttl)


def test_ha_overlapping_leaders_still_send_each_tick_once(redis_url: str, lock_prefix: str) -> None:
    redis_lock = RedisBeatLock(redis_url, key_prefix=lock_prefix)
    lock: BeatLock = AlwaysLeader(redis_lock)
    sent: list[tuple[str, str]] = []
    beats = [
        Scheduler(
            [Entry("minutely", "t", crontab(minute="*"))],
            send=lambda e, name=name: sent.append((name, e.name)),  # type: ignore[misc]
            store=MemoryStore(),
            tz=UTC,
            lock=lock,
        )
        for name in ("a", "b")
    ]
    try:
        for slot in range(6):
            for beat in beats if slot % 2 else reversed(beats):
                beat.tick(T0 + timedelta(minutes=slot, seconds=1))
        assert len(sent) == 5
        assert {name for name, _ in sent} == {"a", "b"}  # whoever came first sent it
    finally:
        redis_lock.close()


# -- beat status ---------------------------------------------------------------------


def test_beat_status_shows_the_last_run_its_task_and_the_next_run() -> None:

    from taskq.beat.scheduler import KeyValueStore
    from taskq.beat.status import beat_status

    app = App(
        "beatstatus",
        broker="memory://",
        backend="memory://",
        beat_schedule={
            "every-minute": {"task": "proj.report", "schedule": 60.0},
            "never-ran": {"task": "proj.other", "schedule": crontab(minute="0", hour="3")},
        },
    )
    backend = app.require_backend()
    start = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)

    def send(entry: Any) -> str:
        task_id = f"id-{entry.name}"
        backend.store(task_id, "SUCCESS", 42, extra={"runtime": 0.25})
        return task_id

    scheduler = Scheduler(
        entries_from_config({"every-minute": app.periodic_tasks["every-minute"]}),
        send=send,
        store=KeyValueStore(backend),
        tz=timezone.utc,
        owner="beat-1",
        clock=lambda: start + timedelta(seconds=60),
    )
    scheduler.tick(start)
    scheduler.tick(start + timedelta(seconds=60))
    found = beat_status(app, now=start + timedelta(seconds=70))
    ran, idle = sorted(found.entries, key=lambda e: e.name)[0], found.entries[1]
    assert (ran.name, ran.task, ran.schedule) == (
        "every-minute",
        "proj.report",
        "<every: 60 seconds>",
    )
    assert ran.last_run_at == start + timedelta(seconds=60)
    assert ran.next_run_at == start + timedelta(seconds=120)
    assert (ran.last_task_id, ran.last_state, ran.last_runtime) == (
        "id-every-minute",
        "SUCCESS",
        0.25,
    )
    assert (ran.total_run_count, ran.sent_by) == (1, "beat-1")
    assert idle.name == "never-ran" and idle.last_run_at is None and idle.last_task_id is None
    assert idle.next_run_at == datetime(2026, 5, 2, 3, 0, tzinfo=timezone.utc)
    assert found.lease.startswith("local") and found.holder is None
    assert found.as_dict()["entries"][0]["last_state"] in ("SUCCESS", None)


def test_beat_status_lists_entries_added_by_on_after_configure() -> None:

    from taskq.beat.status import beat_status

    app = App("beatstatus2", broker="memory://", backend="memory://")

    @app.on_after_configure.connect
    def setup(sender: App, **kwargs: Any) -> None:
        sender.add_periodic_task(30.0, sender.signature("proj.ping"), name="ping")

    found = beat_status(app)
    assert [(e.name, e.task) for e in found.entries] == [("ping", "proj.ping")]
