"""Workers that die, are stopped or run long: nothing lost, nothing stuck.

Each test runs real ``taskq worker`` subprocesses against a private, durable
redis-server (or, for 2 and 4, RabbitMQ too) and checks the ledger (see
``ledger.py``): scenarios 1, 2, 3, 4, 7 and 10 of docs/reliability.md.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from taskq import App
from taskq.broker.redis import RedisBroker, scripts
from tests import servers
from tests.faults.cluster import (
    AMQP_URL,
    Supervisor,
    amqp_waiting,
    delete_amqp,
    kill,
    leases,
    publish,
    start_worker,
    stop_all,
    wait_settled,
)
from tests.faults.faultproj import Config
from tests.faults.ledger import Checker, Ledger
from tests.faults.proxy import RedisProxy, script_call
from tests.faults.redis_server import PrivateRedis
from tests.waiting import wait_until

Producer = Callable[[Config], App]
MakeConfig = Callable[..., Config]


def ids_for(scenario: str, unique: str, count: int) -> list[str]:
    return [f"{scenario}-{unique}-{n}" for n in range(count)]


def prefork_available(worker_output: str) -> bool:
    return "(prefork)" in worker_output


@pytest.mark.timeout(90)
def test_1_sigkill_of_a_prefork_child_mid_task(
    make_config: MakeConfig,
    broker_redis: PrivateRedis,
    ledger: Ledger,
    producer: Producer,
    unique: str,
) -> None:
    config = make_config(broker_redis.url, lease=3.0)
    worker = start_worker(config, "-P", "prefork", "-c", "2")
    try:
        if not prefork_available(worker.output):
            pytest.skip("taskq worker -P prefork does not run a prefork pool yet")
        app = producer(config)
        [long_id] = publish(app, [f"s1-long-{unique}"], seconds=3.0)
        ids = [long_id, *publish(app, ids_for("s1", unique, 11), seconds=0.2)]
        events = ledger.wait(
            lambda ev: any(e.event == "start" and e.id == long_id for e in ev), 20, "long task"
        )
        victim = next(e for e in events if e.event == "start" and e.id == long_id)
        assert victim.pid != worker.popen.pid, "the task ran in the worker's main process"
        os.kill(victim.pid, signal.SIGKILL)  # 3 s task: still running
        ledger.wait_done(ids, 30)
        wait_settled(broker_redis, 10)
        assert worker.popen.poll() is None, "the worker died with its child"
    finally:
        stop_all([worker])
    report = Checker(ledger, "1 prefork child SIGKILL").report(ids, killed=victim.id)
    assert not report.lost and not report.unexpected
    assert ledger.started()[victim.id] >= 2 and ledger.done()[victim.id] == 1


@pytest.mark.timeout(90)
def test_2_sigkill_of_a_worker_holding_running_and_prefetched_tasks(
    make_config: MakeConfig,
    broker_redis: PrivateRedis,
    ledger: Ledger,
    producer: Producer,
    unique: str,
) -> None:
    lease = 3.0
    config = make_config(broker_redis.url, lease=lease)
    ids = publish(producer(config), ids_for("s2", unique, 40), seconds=0.3)
    a = start_worker(
        config, "-P", "threads", "-c", "2", "--prefetch-multiplier", "4", "-n", f"a-{unique}@%h"
    )
    b = None
    try:
        ledger.wait(lambda ev: sum(e.event == "done" for e in ev) >= 4, 20, "worker A busy")
        b = start_worker(config, "-P", "threads", "-c", "4", "-n", f"b-{unique}@%h")
        kill(a)
        killed_at = time.time()
        held = [
            i for lease_id, got in leases(broker_redis).items() if "a-" in lease_id for i in got
        ]
        started = ledger.started()
        running = [i for i in held if started[i] and not ledger.done()[i]]
        assert len(held) >= 3 and running, f"A held {held}, running {running}"
        events = ledger.wait_done(ids, 30)
        wait_settled(broker_redis, 10)
    finally:
        stop_all([w for w in (a, b) if w is not None])
    done_at = {e.id: e.t for e in events if e.event == "done"}
    recovery_held = max(done_at[i] for i in held) - killed_at
    recovery_all = max(done_at.values()) - killed_at
    report = Checker(ledger, "2 worker SIGKILL").report(
        ids,
        held=len(held),
        running=len(running),
        lease=f"{lease:g}s",
        recovery=f"{recovery_held:.2f}s",
        kill_to_last_done=f"{recovery_all:.2f}s",
    )
    assert not report.lost and not report.unexpected
    done_by_b = {e.id for e in events if e.event == "done" and e.pid == b.popen.pid}
    assert set(held) <= done_by_b  # the other worker ran every message A held
    # Back after the lease ran out plus one heartbeat of the rescuer (lease / 3).
    assert recovery_held < lease * 4 / 3 + 3.0


@pytest.mark.timeout(60)
def test_3_crash_between_fetch_and_bookkeeping(
    make_config: MakeConfig,
    broker_redis: PrivateRedis,
    ledger: Ledger,
    producer: Producer,
    unique: str,
) -> None:
    """The worker is killed (SIGKILL) after its first fetch script leased messages
    and before the reply reached it: a proxy between it and Redis holds the reply."""
    config = make_config(broker_redis.url, lease=2.0)
    ids = publish(producer(config), ids_for("s3", unique, 30))
    client = broker_redis.client()
    client.script_load(scripts.FETCH)  # so that the first fetch is one call of it
    client.close()
    with RedisProxy(broker_redis.url) as proxy:
        held_reply = proxy.fault("hold reply", script_call(scripts.FETCH))
        doomed = start_worker(
            dataclasses.replace(config, broker_url=proxy.url),
            "-P",
            "threads",
            "-c",
            "2",
            ready=False,
        )
        try:
            held_reply.wait(timeout=30)
        finally:
            kill(doomed)
    crashed_at = time.time()
    held = [i for got in leases(broker_redis).values() for i in got]
    assert held and not ledger.events()  # leased, never started
    with_rescuer = start_worker(config, "-P", "threads", "-c", "4")
    try:
        events = ledger.wait_done(ids, 20)
        wait_settled(broker_redis, 10)
    finally:
        stop_all([with_rescuer])
    recovery = max(e.t for e in events if e.id in held) - crashed_at
    report = Checker(ledger, "3 crash after fetch").report(
        ids, held=len(held), recovery=f"{recovery:.2f}s"
    )
    assert not report.lost and not report.duplicated and not report.unexpected


@pytest.mark.timeout(60)
def test_4_sigterm_finishes_running_tasks_and_returns_the_rest_at_once(
    make_config: MakeConfig,
    broker_redis: PrivateRedis,
    ledger: Ledger,
    producer: Producer,
    unique: str,
) -> None:
    lease = 30.0  # a return by lease expiry would show as a 30 s wait
    config = make_config(broker_redis.url, lease=lease)
    a = start_worker(config, "-P", "threads", "-c", "2", "--prefetch-multiplier", "3")
    b = None
    try:
        ids = publish(producer(config), ids_for("s4", unique, 6), seconds=3.0)
        ledger.wait(lambda ev: len(ev) >= 2, 20, "two tasks running on A")
        deadline = time.monotonic() + 10
        while sum(len(v) for v in leases(broker_redis).values()) < 6:
            assert time.monotonic() < deadline, "A never leased all six"
            time.sleep(0.05)
        b = start_worker(config, "-P", "threads", "-c", "4")
        running_on_a = {e.id for e in ledger.events() if e.event == "start"}
        a.popen.send_signal(signal.SIGTERM)
        term_at = time.time()
        events = ledger.wait_done(ids, 20)
        assert a.popen.wait(10) == 0, a.output
        wait_settled(broker_redis, 10)
    finally:
        stop_all([w for w in (a, b) if w is not None])
    started_on_b = [e for e in events if e.event == "start" and e.pid == b.popen.pid]
    handover = max(e.t for e in started_on_b) - term_at
    report = Checker(ledger, "4 SIGTERM warm shutdown").report(
        ids, running_on_a=len(running_on_a), handed_over=len(started_on_b),
        handover=f"{handover:.2f}s",
    )  # fmt: skip
    assert not report.lost and not report.duplicated and report.restarts == 0
    assert {e.id for e in events if e.event == "done" and e.pid == a.popen.pid} == running_on_a
    assert len(started_on_b) == 4 and handover < 3.0  # long before the 30 s lease


@pytest.mark.timeout(120)
def test_7_a_task_that_kills_its_process_is_dead_lettered(
    make_config: MakeConfig,
    broker_redis: PrivateRedis,
    ledger: Ledger,
    producer: Producer,
    unique: str,
) -> None:
    """Solo pool, one message at a time, under a supervisor that restarts the worker
    (systemd's Restart=always): each death leaves the message leased to a dead
    consumer; the next worker's reaper counts a delivery and gives it back."""
    config = make_config(broker_redis.url, lease=2.0, max_attempts=3)
    app = producer(config)
    before = publish(app, ids_for("s7-before", unique, 10))
    poison = app.send_task("faults.suicide", task_id=f"s7-poison-{unique}").id
    after = publish(app, ids_for("s7-after", unique, 10))
    with Supervisor(config, "-P", "solo", "--prefetch-multiplier", "1") as supervisor:
        ledger.wait_done(before + after, 60)
        parked = wait_dead_letter(broker_redis.url, poison, 30)
        wait_settled(broker_redis, 10)
        deaths = supervisor.deaths
    report = Checker(ledger, "7 poison task (solo, supervised)").report(
        before + after, poison_runs=ledger.started()[poison], deaths=deaths
    )
    assert not report.lost and not report.unexpected
    assert ledger.started()[poison] == 3 and deaths == 3
    assert "died each time (limit 3)" in parked


@pytest.mark.timeout(60)
def test_7_prefork_only_the_child_dies(
    make_config: MakeConfig,
    broker_redis: PrivateRedis,
    ledger: Ledger,
    producer: Producer,
    unique: str,
) -> None:
    config = make_config(broker_redis.url, lease=2.0, max_attempts=3)
    worker = start_worker(config, "-P", "prefork", "-c", "2")
    try:
        if not prefork_available(worker.output):
            pytest.skip("taskq worker -P prefork does not run a prefork pool yet")
        app = producer(config)
        poison = app.send_task("faults.suicide", task_id=f"s7p-poison-{unique}").id
        others = publish(app, ids_for("s7p", unique, 20), seconds=0.05)
        ledger.wait_done(others, 30)
        parked = wait_dead_letter(broker_redis.url, poison, 30)
        wait_settled(broker_redis, 10)
        assert worker.popen.poll() is None
    finally:
        stop_all([worker])
    report = Checker(ledger, "7 poison task (prefork)").report(
        others, poison_runs=ledger.started()[poison]
    )
    assert not report.lost and not report.duplicated and not report.unexpected
    assert ledger.started()[poison] == 3
    assert "died each time (limit 3)" in parked


def wait_dead_letter(url: str, task_id: str, timeout: float) -> str:
    """The reason ``task_id`` was dead-lettered, once it is."""
    broker = RedisBroker(url, consumer_id="inspector")
    deadline = time.monotonic() + timeout
    try:
        while True:
            for dead in broker.dead_letters(1000):
                if dead.envelope.headers.get("id") == task_id:
                    return dead.reason
            assert time.monotonic() < deadline, f"{task_id} not dead-lettered in {timeout}s"
            time.sleep(0.1)
    finally:
        broker.close()


@pytest.mark.timeout(60)
def test_10_a_task_three_times_longer_than_the_lease_runs_once(
    make_config: MakeConfig,
    broker_redis: PrivateRedis,
    ledger: Ledger,
    producer: Producer,
    unique: str,
) -> None:
    lease = 2.0
    config = make_config(broker_redis.url, lease=lease)
    app = producer(config)
    with_two = [start_worker(config, "-P", "threads", "-c", "2") for _ in range(2)]
    try:
        [long_id] = publish(app, [f"s10-long-{unique}"], seconds=3 * lease)
        short = publish(app, ids_for("s10", unique, 20), seconds=0.05)
        ledger.wait_done([long_id, *short], 30)
        wait_settled(broker_redis, 10)
    finally:
        stop_all(with_two)
    report = Checker(ledger, "10 task 3x the lease").report(
        [long_id, *short], lease=f"{lease:g}s", long_task=f"{3 * lease:g}s"
    )
    assert not report.lost and not report.duplicated and report.restarts == 0
    assert ledger.started()[long_id] == 1


@pytest.fixture
def amqp_config(make_config: MakeConfig, unique: str) -> Iterator[Config]:
    """RabbitMQ: this test's queue and dead-letter queue, deleted afterwards."""
    servers.require("amqp")
    dead = f"faults-dead-{unique}"
    config = make_config(AMQP_URL, transport_options={"dead_letter_queue": dead})
    yield config
    delete_amqp(config.queue, dead)


@pytest.mark.timeout(90)
def test_2_rabbitmq_sigkill_of_a_worker(
    amqp_config: Config, ledger: Ledger, producer: Producer, unique: str
) -> None:
    """RabbitMQ takes back what a dead connection held at once (no lease to wait for)."""
    ids = publish(producer(amqp_config), ids_for("s2r", unique, 40), seconds=0.3)
    a = start_worker(amqp_config, "-P", "threads", "-c", "2", "--prefetch-multiplier", "4")
    b = None
    try:
        ledger.wait(lambda ev: sum(e.event == "done" for e in ev) >= 4, 20, "worker A busy")
        b = start_worker(amqp_config, "-P", "threads", "-c", "4")
        kill(a)
        killed_at = time.time()
        done = ledger.done()
        running = {e.id for e in ledger.events() if e.pid == a.popen.pid and not done[e.id]}
        assert running, "A was running nothing when killed"
        events = ledger.wait_done(ids, 30)
        stop_all([w for w in (a, b) if w is not None])
        assert amqp_waiting(amqp_config.queue) == 0  # nothing left unacknowledged
    finally:
        stop_all([w for w in (a, b) if w is not None])
    recovery = max(e.t for e in events if e.event == "done" and e.id in running) - killed_at
    report = Checker(ledger, "2 worker SIGKILL (rabbitmq)").report(
        ids, running=len(running), recovery=f"{recovery:.2f}s"
    )
    assert not report.lost and not report.unexpected


@pytest.mark.timeout(60)
def test_4_rabbitmq_sigterm_returns_unstarted_tasks_at_once(
    amqp_config: Config, ledger: Ledger, producer: Producer, unique: str
) -> None:
    a = start_worker(amqp_config, "-P", "threads", "-c", "2", "--prefetch-multiplier", "3")
    b = None
    try:
        ids = publish(producer(amqp_config), ids_for("s4r", unique, 6), seconds=3.0)
        ledger.wait(lambda ev: len(ev) >= 2, 20, "two tasks running on A")
        b = start_worker(amqp_config, "-P", "threads", "-c", "4")
        running_on_a = {e.id for e in ledger.events() if e.event == "start"}
        a.popen.send_signal(signal.SIGTERM)
        term_at = time.time()
        events = ledger.wait_done(ids, 20)
        assert a.popen.wait(10) == 0, a.output
        stop_all([w for w in (a, b) if w is not None])
        assert amqp_waiting(amqp_config.queue) == 0
    finally:
        stop_all([w for w in (a, b) if w is not None])
    started_on_b = [e for e in events if e.event == "start" and e.pid == b.popen.pid]
    handover = max(e.t for e in started_on_b) - term_at
    report = Checker(ledger, "4 SIGTERM warm shutdown (rabbitmq)").report(
        ids, running_on_a=len(running_on_a), handed_over=len(started_on_b),
        handover=f"{handover:.2f}s",
    )  # fmt: skip
    assert not report.lost and not report.duplicated and report.restarts == 0
    assert len(started_on_b) == 4 and handover < 2.0  # not after A's 3 s tasks


@pytest.mark.timeout(90)
def test_12_a_worker_paused_past_its_lease_does_not_run_what_it_prefetched(
    make_config: MakeConfig,
    broker_redis: PrivateRedis,
    ledger: Ledger,
    producer: Producer,
    unique: str,
) -> None:
    """Issue 12, item 11: worker A is stopped (SIGSTOP) with one task running and six
    prefetched, longer than its lease; B takes them all over. When A resumes it
    finishes the running one (at-least-once allows that run twice) and gives the
    six up instead of running them again (2 of 7 such ran twice before)."""
    lease = 2.0
    config = make_config(broker_redis.url, lease=lease)
    app = producer(config)
    [long_id] = publish(app, [f"s12-long-{unique}"], seconds=1.0)
    ids = publish(app, ids_for("s12", unique, 6), seconds=0.05)
    a = start_worker(
        config, "-P", "threads", "-c", "1", "--prefetch-multiplier", "8", "-n", f"a-{unique}@%h"
    )
    b = None
    try:
        ledger.wait(lambda ev: any(e.event == "start" for e in ev), 20, "A running the long task")
        held = next(got for lease_id, got in leases(broker_redis).items() if "a-" in lease_id)
        assert set(ids) <= set(held), f"A prefetched {held}"
        os.kill(a.popen.pid, signal.SIGSTOP)
        b = start_worker(config, "-P", "threads", "-c", "4", "-n", f"b-{unique}@%h")
        ledger.wait_done([long_id, *ids], 30, "B ran everything A held")
        os.kill(a.popen.pid, signal.SIGCONT)
        # Either A gives each of them up (logged), or it runs one again.
        wait_until(
            lambda: (
                a.output.count("Not running") >= len(ids) or any(ledger.done()[i] > 1 for i in ids)
            ),
            20,
            "A dealt with its six",
        )
        wait_settled(broker_redis, 10)
        assert a.popen.poll() is None
    finally:
        if a.popen.poll() is None:
            os.kill(a.popen.pid, signal.SIGCONT)
        stop_all([w for w in (a, b) if w is not None])
    report = Checker(ledger, "12 worker paused past its lease").report(
        [long_id, *ids], lease=f"{lease:g}s", prefetched=len(ids)
    )
    assert not report.lost and not report.unexpected
    twice = sorted(i for i in ids if ledger.done()[i] > 1)
    assert not twice, f"A ran {len(twice)} prefetched task(s) again after its lease lapsed"
