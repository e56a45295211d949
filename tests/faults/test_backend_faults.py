"""Scenario 9: the result backend goes away while the broker stays up. Tasks keep
running; their outcomes wait (retried with backoff) and are stored once it is back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from taskq import App
from taskq.result import task_key
from tests.faults.cluster import publish, start_worker, stop_all, wait_settled
from tests.faults.faultproj import Config
from tests.faults.ledger import Checker, Ledger
from tests.faults.redis_server import PrivateRedis

OUTAGE = 10.0  # seconds the backend is down
MAX_SLEEP_MS = 2000  # retries wait 13 to 27 s in all with 20 retries: the outage fits


@pytest.mark.timeout(90)
def test_9_result_backend_down_for_ten_seconds(
    make_config: Callable[..., Config],
    broker_redis: PrivateRedis,
    ledger: Ledger,
    producer: Callable[[Config], App],
    unique: str,
    tmp_path: Path,
) -> None:
    results = PrivateRedis(tmp_path / "results-redis", durable=True)
    results.start()
    config = make_config(
        broker_redis.url, backend_url=results.url, backend_max_sleep_ms=MAX_SLEEP_MS
    )
    app = producer(config)
    least, _ = app.require_backend().store_retry.budget()
    assert least > OUTAGE + 2, "the retry budget must outlast the outage"
    worker = start_worker(config, "-P", "threads", "-c", "4")
    try:
        before = publish(app, [f"s9-before-{unique}-{n}" for n in range(10)], seconds=0.05)
        ledger.wait_done(before, 20)
        wait_results(results, before, 10)

        results.kill()
        down_at = time.time()
        during = publish(app, [f"s9-during-{unique}-{n}" for n in range(30)], seconds=0.05)
        # Tasks run while the backend is down: the pool's four threads each finish one
        # and then wait in the retry loop holding its outcome (and its message).
        events = ledger.wait(
            lambda ev: sum(e.event == "done" and e.id in during for e in ev) >= 4,
            OUTAGE / 2,
            "tasks running while the backend is down",
        )
        ran_while_down = len({e.id for e in events if e.event == "done" and e.id in during})
        time.sleep(max(0.0, down_at + OUTAGE - time.time()))  # the outage itself
        results.start()
        up_at = time.time()
        ledger.wait_done(during, 60)
        stored_at = wait_results(results, before + during, 30)
        wait_settled(broker_redis, 10)
        assert worker.popen.poll() is None
    finally:
        stop_all([worker])
        results.stop()
    report = Checker(ledger, "9 result backend down").report(
        before + during,
        outage=f"{OUTAGE:g}s",
        ran_while_down=ran_while_down,
        results_stored=len(before + during),
        last_result_after_return=f"{stored_at - up_at:.2f}s",
    )
    assert not report.lost and not report.duplicated and not report.unexpected
    assert "Result backend is back" in worker.output


def wait_results(server: PrivateRedis, ids: list[str], timeout: float) -> float:
    """Wait until every id has a SUCCESS result; return the time that happened."""
    client = server.client()
    deadline = time.monotonic() + timeout
    try:
        while True:
            values = client.mget([task_key(i) for i in ids])
            if all(v is not None and b'"SUCCESS"' in v for v in values):
                return time.time()
            missing = sum(v is None for v in values)
            assert time.monotonic() < deadline, f"{missing} of {len(ids)} results missing"
            time.sleep(0.05)
    finally:
        client.close()
