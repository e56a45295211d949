"""Fleet metrics from events: ``FleetMetrics`` fed the events a receiver hands on, read
back through prometheus_client's own parser of the text exposition."""

from __future__ import annotations

import itertools
import os
from datetime import datetime, timezone
from typing import Any

import orjson
import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from taskq.events import EventDispatcher, EventReceiver  # noqa: E402
from taskq.events.event import utcoffset  # noqa: E402
from taskq.metrics.fleet import FleetMetrics  # noqa: E402

_clock = itertools.count(1)


def event(kind: str, at: float, hostname: str = "w1@host", **fields: Any) -> dict[str, Any]:
    """An event as it reaches a handler: built by a dispatcher, stamped as its thread
    stamps it, through JSON, then normalized by a receiver."""
    sender = EventDispatcher(lambda: None, hostname)  # type: ignore[arg-type,return-value]
    made = sender.event(kind, fields)
    made.update(hostname=hostname, pid=os.getpid(), utcoffset=utcoffset(), clock=next(_clock))
    made["timestamp"] = at
    wire = orjson.loads(orjson.dumps(made))
    return EventReceiver(lambda: None, lambda e: None).normalize(wire)  # type: ignore[arg-type,return-value]


def samples(metrics: FleetMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(metrics: FleetMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def run(metrics: FleetMetrics, task_id: str, name: str, t0: float, outcome: str) -> None:
    """sent at t0, received at +1, started at +3, ends at +3.5."""
    metrics.observe(event("task-sent", t0, hostname="gen1@app", uuid=task_id, name=name))
    metrics.observe(event("task-received", t0 + 1, uuid=task_id, name=name, args="()"))
    metrics.observe(event("task-started", t0 + 3, uuid=task_id))
    if outcome == "succeeded":
        metrics.observe(event("task-succeeded", t0 + 3.5, uuid=task_id, result="1", runtime=0.4))
    else:
        metrics.observe(event("task-failed", t0 + 3.5, uuid=task_id, exception="E()"))


def test_tasks_are_counted_by_name_and_state() -> None:
    metrics = FleetMetrics()
    t0 = 1_000_000.0
    for i in range(3):
        run(metrics, f"ok-{i}", "proj.add", t0, "succeeded")
    run(metrics, "bad-1", "proj.fail", t0, "failed")
    assert value(metrics, "taskq_tasks_total", task="proj.add", state="succeeded") == 3
    assert value(metrics, "taskq_tasks_total", task="proj.add", state="received") == 3
    assert value(metrics, "taskq_tasks_total", task="proj.add", state="started") == 3
    assert value(metrics, "taskq_tasks_total", task="proj.fail", state="failed") == 1
    assert value(metrics, "taskq_tasks_total", task="proj.fail", state="succeeded") is None


def test_runtime_from_the_event_or_from_task_started() -> None:
    metrics = FleetMetrics()
    run(metrics, "a", "proj.add", 0.0, "succeeded")  # runtime field: 0.4
    run(metrics, "b", "proj.fail", 0.0, "failed")  # no field: 3.5 - 3 = 0.5
    assert value(metrics, "taskq_task_runtime_seconds_sum", task="proj.add") == pytest.approx(0.4)
    assert value(metrics, "taskq_task_runtime_seconds_count", task="proj.add") == 1
    assert value(metrics, "taskq_task_runtime_seconds_bucket", task="proj.add", le="0.25") == 0
    assert value(metrics, "taskq_task_runtime_seconds_bucket", task="proj.add", le="0.5") == 1
    assert value(metrics, "taskq_task_runtime_seconds_sum", task="proj.fail") == pytest.approx(0.5)


def test_wait_runs_from_sent_else_from_received() -> None:
    metrics = FleetMetrics()
    run(metrics, "a", "proj.add", 100.0, "succeeded")  # sent 100, started 103
    metrics.observe(event("task-received", 200.0, uuid="b", name="proj.add"))  # no task-sent
    metrics.observe(event("task-started", 200.5, uuid="b"))
    assert value(metrics, "taskq_task_wait_seconds_count", task="proj.add") == 2
    assert value(metrics, "taskq_task_wait_seconds_sum", task="proj.add") == pytest.approx(3.5)


def test_a_task_with_an_eta_waits_from_its_eta() -> None:
    metrics = FleetMetrics()
    eta = datetime.fromtimestamp(160.0, timezone.utc).isoformat()
    metrics.observe(event("task-sent", 100.0, uuid="a", name="proj.add", eta=eta))
    metrics.observe(event("task-received", 101.0, uuid="a", name="proj.add", eta=eta))
    metrics.observe(event("task-started", 161.0, uuid="a"))
    assert value(metrics, "taskq_task_wait_seconds_sum", task="proj.add") == pytest.approx(1.0)


def test_a_retried_task_waits_again_from_its_next_delivery() -> None:
    metrics = FleetMetrics()
    metrics.observe(event("task-received", 10.0, uuid="a", name="proj.flaky"))
    metrics.observe(event("task-started", 11.0, uuid="a"))
    metrics.observe(event("task-retried", 12.0, uuid="a", exception="Retry()"))
    metrics.observe(event("task-received", 20.0, uuid="a", name="proj.flaky"))
    metrics.observe(event("task-started", 20.25, uuid="a"))
    metrics.observe(event("task-succeeded", 21.0, uuid="a", runtime=0.75))
    assert value(metrics, "taskq_tasks_total", task="proj.flaky", state="retried") == 1
    assert value(metrics, "taskq_task_wait_seconds_sum", task="proj.flaky") == pytest.approx(1.25)
    assert value(metrics, "taskq_task_runtime_seconds_sum", task="proj.flaky") == pytest.approx(
        1.75
    )


def test_a_task_sent_that_arrives_after_the_task_ended_starts_nothing() -> None:
    # The producer's events travel apart from the worker's: they may come last.
    metrics = FleetMetrics()
    metrics.observe(event("task-received", 1.0, uuid="a", name="proj.add"))
    metrics.observe(event("task-started", 1.5, uuid="a"))
    metrics.observe(event("task-succeeded", 2.0, uuid="a", runtime=0.5))
    metrics.observe(event("task-sent", 0.5, hostname="gen1@app", uuid="a", name="proj.add"))
    assert value(metrics, "taskq_tasks_total", task="proj.add", state="sent") == 1
    assert value(metrics, "taskq_task_wait_seconds_count", task="proj.add") == 1
    assert metrics.tracked == 0


def test_events_of_a_task_never_seen_received_count_as_unknown() -> None:
    metrics = FleetMetrics()
    metrics.observe(event("task-started", 1.0, uuid="x"))
    metrics.observe(event("task-succeeded", 2.0, uuid="x", runtime=1.0))
    metrics.observe(event("task-revoked", 2.0, uuid="y"))
    assert value(metrics, "taskq_tasks_total", task="unknown", state="succeeded") == 1
    assert value(metrics, "taskq_tasks_total", task="unknown", state="revoked") == 1


def test_worker_events_and_garbage_are_ignored() -> None:
    metrics = FleetMetrics()
    metrics.observe(event("worker-heartbeat", 1.0, active=1, processed=2))
    for bad in ({}, {"type": 3}, {"type": "task-succeeded"}, {"type": "task-x", "uuid": "a"}):
        metrics.observe(bad)
    assert not [k for k in samples(metrics) if k[0] == "taskq_tasks_total"]


def test_memory_is_bounded() -> None:
    metrics = FleetMetrics(max_tracked=100, max_task_names=5)
    for i in range(1000):  # received, never finished: the oldest are forgotten
        metrics.observe(event("task-received", 1.0, uuid=f"t{i}", name=f"proj.t{i % 10}"))
    assert metrics.tracked == 100
    names = {dict(k[1])["task"] for k in samples(metrics) if k[0] == "taskq_tasks_total"}
    assert names == {"proj.t0", "proj.t1", "proj.t2", "proj.t3", "proj.t4", "other"}
    metrics.observe(event("task-succeeded", 2.0, uuid="t0", runtime=1.0))  # forgotten
    assert value(metrics, "taskq_tasks_total", task="unknown", state="succeeded") == 1


def test_queues_workers_and_beat_lag_are_reported_as_last_set() -> None:
    metrics = FleetMetrics()
    assert value(metrics, "taskq_beat_lag_seconds") is None
    metrics.set_queues({"celery": (5, 2, 1), "mail": (0, 0, 3)})
    metrics.set_workers(up=3, lost=1)
    metrics.set_beat_lag(0.25)
    assert value(metrics, "taskq_queue_messages", queue="celery", state="ready") == 5
    assert value(metrics, "taskq_queue_messages", queue="celery", state="delayed") == 2
    assert value(metrics, "taskq_queue_messages", queue="mail", state="dead_lettered") == 3
    assert value(metrics, "taskq_workers", state="up") == 3
    assert value(metrics, "taskq_workers", state="lost") == 1
    assert value(metrics, "taskq_beat_lag_seconds") == 0.25
    metrics.set_queues({"mail": (1, 0, 0)})
    metrics.set_beat_lag(None)
    assert value(metrics, "taskq_queue_messages", queue="celery", state="ready") is None
    assert value(metrics, "taskq_beat_lag_seconds") is None
