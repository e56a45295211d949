"""The worker's metrics files: every process counts in its own, forked children
included; the scrape adds them up and folds the files of ended processes into one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from taskq.metrics.worker import Live, WorkerMeter, WorkerMetrics  # noqa: E402
from taskq.result import State  # noqa: E402

TASKS = {"proj.add": object()}


def live() -> Live:
    return Live(
        "w@h", "prefork", 2, active=1, reserved=2, scheduled=3, prefetched=6, started_at=100.0
    )


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def in_child(meter: WorkerMeter, count: int) -> None:
    """Count ``count`` successes in a forked child and wait for it."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            for _ in range(count):
                meter.task_done("proj.add", State.SUCCESS, 0.2)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_children_count_in_files_of_their_own_and_ended_ones_are_folded() -> None:
    metrics = WorkerMetrics(TASKS, live)
    metrics.open()
    try:
        meter = metrics.meter
        meter.task_done("proj.add", State.SUCCESS, 0.01)  # the parent opens its files first
        for count in (2, 3, 4):
            in_child(meter, count)
        meter.task_done("proj.add", State.FAILURE, 20.0)
        meter.task_done("proj.nope", State.FAILURE)  # not registered: one label for all
        meter.task_done("proj.add", "LOST")
        add = {"task": "proj.add"}
        for _ in range(2):  # the second scrape reads the folded file
            found = scrape(metrics.registry)
            total = ("taskq_worker_tasks_total", frozenset({**add, "state": "succeeded"}.items()))
            assert found[total] == 10
            assert found["taskq_worker_task_runtime_seconds_count", frozenset(add.items())] == 11
            bucket = frozenset({**add, "le": "0.25"}.items())
            assert found["taskq_worker_task_runtime_seconds_bucket", bucket] == 10
            bucket = frozenset({**add, "le": "30.0"}.items())
            assert found["taskq_worker_task_runtime_seconds_bucket", bucket] == 11
            assert found[
                "taskq_worker_task_runtime_seconds_sum", frozenset(add.items())
            ] == pytest.approx(0.01 + 9 * 0.2 + 20.0)
            lost = frozenset({**add, "state": "lost"}.items())
            assert found["taskq_worker_tasks_total", lost] == 1
            nope = frozenset({"task": "unregistered", "state": "failed"}.items())
            assert found["taskq_worker_tasks_total", nope] == 1
            names = sorted(p.name for p in Path(metrics.directory).iterdir())
            assert names == sorted(
                [
                    f"counter_{os.getpid()}.db",
                    f"histogram_{os.getpid()}.db",
                    "counter_ended.db",
                    "histogram_ended.db",
                ]
            )
        in_child(meter, 5)  # folded into what was folded before
        found = scrape(metrics.registry)
        assert found[total] == 15
    finally:
        metrics.close()
    assert not Path(metrics.directory).exists()


def test_live_gauges_and_info() -> None:
    metrics = WorkerMetrics(TASKS, live)
    metrics.open()
    try:
        found = scrape(metrics.registry)
    finally:
        metrics.close()
    none: frozenset[tuple[str, str]] = frozenset()
    assert found["taskq_worker_active_tasks", none] == 1
    assert found["taskq_worker_reserved_tasks", none] == 2
    assert found["taskq_worker_scheduled_tasks", none] == 3
    assert found["taskq_worker_prefetched_messages", none] == 6
    assert found["taskq_worker_concurrency", none] == 2
    assert found["taskq_worker_start_time_seconds", none] == 100.0
    info = next(k for k in found if k[0] == "taskq_worker_info")
    assert {("hostname", "w@h"), ("pool", "prefork")} <= info[1]
