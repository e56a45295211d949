"""The workloads W1-W6: each returns rows (plain dicts) for the report and the JSON.

Timing never includes a worker's start-up: drain figures run from the first task's
start to the last task's end, as recorded by the task bodies (bench.counter).
Redis command counts come from INFO commandstats on the broker's server, which
nothing but the framework and its producer uses.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from bench import counter, rabbit
from bench.procs import BenchError, Producer, RedisServer, Worker, calls_delta, worker_env
from bench.specs import DB, QUEUE, Spec

MiB = 1024 * 1024
#: taskq's delayed store on the bench server (bench/apps/taskq_app.py sets the prefix).
TASKQ_DELAYED = "taskq:delayed"
#: W6 polls the delayed store this often while due members remain.
PROMOTE_POLL = 0.001


@dataclasses.dataclass
class Config:
    """Sizes and limits of one run (``bench/run --help`` documents each)."""

    drain_n: int = 10_000
    results_n: int = 3_000
    trials: int = 1_000
    latency_budget: float = 25.0
    latency_gap: float = 0.02
    enqueue_n: int = 5_000
    async_n: int = 10_000
    green_n: int = 10_000
    backlog_taskq: int = 1_000_000
    backlog_others: int = 10_000
    due_n: int = 2_000
    due_n_taskq: int = 20_000
    due_timeout: float = 20.0
    scale_n: int = 50_000
    scale_n_others: int = 5_000
    scale_backlog: int = 1_000_000
    scale_rounds: int = 1
    scale_profile: int = 0


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def per_task(calls: dict[str, int], n: int, top: int = 6) -> dict[str, Any]:
    """Commands per task: the total and the most frequent ones."""
    n = max(n, 1)
    return {
        "total": sum(calls.values()) / n,
        "top": {name: count / n for name, count in list(calls.items())[:top]},
        "counts": calls,
    }


class Bench:
    """Runs workloads against the bench's own two Redis servers.

    ``broker`` carries every framework's traffic (one database each); ``signal``
    carries only the completion counter, so it never shows in the broker's counts.
    """

    def __init__(
        self,
        config: Config,
        broker: RedisServer,
        signal: RedisServer,
        logs: Path,
        amqp: frozenset[str] = frozenset(),
    ):
        self.config, self.broker, self.signal, self.logs = config, broker, signal, logs
        self._signal = signal.client()
        #: Frameworks whose queues are on RabbitMQ (``--broker amqp``: bench.rabbit);
        #: their results stay on ``broker``, the bench Redis.
        self.amqp = amqp
        #: Where W7's delay server listens (bench.delay); __main__ starts it for W7.
        self.delay_address = f"127.0.0.1:{broker.port + 2}"

    # -- plumbing ----------------------------------------------------------------

    @staticmethod
    def row(spec: Spec) -> dict[str, Any]:
        """A new row; ``load1`` is the machine's 1-minute load average before it ran
        (others' processes share these 2 cores: a high figure means noisy numbers)."""
        return {"config": spec.label, "framework": spec.framework, "load1": os.getloadavg()[0]}

    def env(self, framework: str, results: bool) -> dict[str, str]:
        return worker_env(
            {
                "BENCH_BROKER_URL": (
                    rabbit.url(framework)
                    if framework in self.amqp
                    else f"{self.broker.url}/{DB[framework]}"
                ),
                "BENCH_BACKEND_URL": f"{self.broker.url}/{DB[framework]}",
                "BENCH_SIGNAL_URL": f"{self.signal.url}/0",
                "BENCH_QUEUE": QUEUE,
                "BENCH_RESULTS": "1" if results else "0",
                "BENCH_DELAY_ADDR": self.delay_address,
            }
        )

    def fresh(self) -> None:
        self.broker.flush()
        self.signal.flush()
        for framework in self.amqp:
            rabbit.reset(framework)

    def _log(self, workload: str, label: str) -> Path:
        return self.logs / f"{workload}-{re.sub(r'[^a-z0-9]+', '-', label.lower())}.log"

    def producer(self, framework: str, results: bool, workload: str) -> Producer:
        log = self._log(workload, f"{framework}-producer")
        return Producer(framework, self.env(framework, results), log)

    def worker(
        self, spec: Spec, results: bool, workload: str, argv: list[str] | None = None
    ) -> Worker:
        log = self._log(workload, spec.label)
        return Worker(argv or spec.argv(), self.env(spec.framework, results), log)

    def done_count(self) -> int:
        return int(self._signal.get(counter.DONE) or 0)

    def wait_done(self, target: int, timeout: float, worker: Worker) -> bool:
        """Wait until ``target`` tasks are done; sample the worker's RSS meanwhile."""
        deadline = time.monotonic() + timeout
        sampled = 0.0
        while self.done_count() < target:
            now = time.monotonic()
            if now > deadline:
                return False
            if worker.exited() is not None:
                raise BenchError(f"worker exited ({worker.exited()}):\n{worker.tail()}")
            if now - sampled > 0.25:
                worker.rss()
                sampled = now
            time.sleep(0.01)
        return True

    def span(self) -> tuple[float, float]:
        """(first task start, last task end) over all worker processes."""
        first = self._signal.zrange(counter.FIRST, 0, 0, withscores=True)
        last = self._signal.zrange(counter.LAST, -1, -1, withscores=True)
        if not first or not last:
            raise BenchError("no task reported its start and end")
        return float(first[0][1]), float(last[0][1])

    def probe(self, spec: Spec) -> str | None:
        """Start the worker on an empty queue: why it cannot serve, or None when it can."""
        worker = self.worker(spec, False, "probe").start()
        try:
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                if worker.exited() is not None:
                    last = worker.tail(2).splitlines()
                    return f"worker refused to start: {last[-1] if last else 'no output'}"
                if spec.children and len(worker.processes()) - 1 >= spec.children:
                    return None
                time.sleep(0.1)
            if spec.children:
                return (
                    f"no child processes after 5 s: this taskq runs {spec.pool[1]!r} "
                    "on another pool (not available yet)"
                )
            return None
        finally:
            worker.stop()

    # -- W1, W2, W5: drain a pre-loaded queue ----------------------------------------

    def drain(
        self, spec: Spec, n: int, results: bool, workload: str, task: str = "noop"
    ) -> dict[str, Any]:
        row = self.row(spec)
        row.update(processes=spec.processes, n=n)
        if spec.probe:
            reason = self.probe(spec)
            if reason:
                return {**row, "skipped": reason}
        self.fresh()
        producer: Producer | None = None
        worker = self.worker(spec, results, workload)
        try:
            producer = self.producer(spec.framework, results, workload)
            before, cpu = self.broker.command_calls(), self.broker.cpu_seconds()
            load = producer.call("fast", n=n, task=task, keep=results)
            loaded = self.broker.command_calls()
            row["redis_cpu_enqueue_us"] = (self.broker.cpu_seconds() - cpu) / n * 1e6
            cpu = self.broker.cpu_seconds()
            row.update(enqueue_s=load["seconds"], enqueue_api=load["api"])
            row["enqueue_calls"] = per_task(calls_delta(before, loaded), n)
            worker.start()
            timeout = max(120.0, n / 200)
            if results:
                producer.send("get_all", timeout=timeout + 30)
            finished = self.wait_done(n, timeout, worker)
            if results:
                collected = producer.read(timeout + 60)
                row["get_errors"] = collected["errors"]
            row["drain_calls"] = per_task(calls_delta(loaded, self.broker.command_calls()), n)
            row["redis_cpu_us"] = (self.broker.cpu_seconds() - cpu) / n * 1e6
            row["rss_mib"] = worker.rss() / MiB
            row["peak_rss_mib"] = worker.peak_rss / MiB
            done = self.done_count()
            first, last = self.span()
            row.update(completed=done, timed_out=not finished, drain_s=last - first)
            row["tasks_per_s"] = done / (last - first)
            if results:
                row["collected_s"] = collected["finished_at"] - first
        except BenchError as exc:
            row["error"] = str(exc)
        finally:
            worker.stop()
            if producer is not None:
                producer.close()
        return row

    # -- W7: blocking I/O at concurrency 1,000, one process ---------------------------

    def in_flight(self) -> int:
        """The most W7 tasks one worker process had waiting at once (bench.counter)."""
        top = self._signal.zrange(counter.INFLIGHT, -1, -1, withscores=True)
        return int(top[0][1]) if top else 0

    def green(
        self, spec: Spec, n: int, task: str, hold: str, concurrency: int = 1000
    ) -> dict[str, Any]:
        """Drain ``n`` pre-loaded ``task`` messages (one 10 ms wait on the delay
        server each), then measure memory: the worker idle, then with ``concurrency``
        ``hold`` tasks waiting at once (``delay.HOLD`` seconds each)."""
        row = self.drain(spec, n, False, "W7", task)
        if "skipped" in row or "error" in row:
            return row
        row["in_flight_max"] = self.in_flight()
        try:
            row.update(self.memory(spec, hold, concurrency))
        except BenchError as exc:
            row["error"] = str(exc)
        return row

    def memory(self, spec: Spec, hold: str, concurrency: int) -> dict[str, Any]:
        """RSS of the worker idle (steady: two samples 0.5 s apart within 1%), then
        its peak while ``concurrency`` ``hold`` tasks are sent and wait together;
        the difference per 1,000 tasks that were in flight at once."""
        self.fresh()
        worker = self.worker(spec, False, "W7-memory").start()
        producer: Producer | None = None
        try:
            idle, last = 0, 0
            deadline = time.monotonic() + 15.0
            time.sleep(1.0)
            while time.monotonic() < deadline and not idle:
                if worker.exited() is not None:
                    raise BenchError(f"worker exited ({worker.exited()}):\n{worker.tail()}")
                now = worker.rss()
                idle = now if last and abs(now - last) <= 0.01 * last else 0
                last = now
                time.sleep(0.5)
            idle = idle or last
            worker.peak_rss = 0
            producer = self.producer(spec.framework, False, "W7-memory")
            producer.call("fast", n=concurrency, task=hold, keep=False)
            if not self.wait_done(concurrency, 60.0, worker):
                raise BenchError(f"the {concurrency} held tasks did not finish within 60 s")
            held = self.in_flight()
            peak = worker.peak_rss
            return {
                "idle_rss_mib": idle / MiB,
                "held_rss_mib": peak / MiB,
                "held": held,
                "mib_per_1000": (peak - idle) / MiB * 1000 / max(held, 1),
            }
        finally:
            worker.stop()
            if producer is not None:
                producer.close()

    # -- W3: idle latency ------------------------------------------------------------

    def latency(self, spec: Spec) -> dict[str, Any]:
        cfg = self.config
        row = self.row(spec)
        self.fresh()
        producer: Producer | None = None
        worker = self.worker(spec, True, "W3").start()
        try:
            producer = self.producer(spec.framework, True, "W3")
            warm = producer.call("latency", trials=3, gap=0.01, budget=60.0, timeout=60.0)
            if warm["errors"]:
                raise BenchError(f"warm-up tasks did not finish:\n{worker.tail()}")
            self._signal.delete(counter.LATENCY)
            before = self.broker.command_calls()
            reply = producer.call(
                "latency",
                trials=cfg.trials,
                gap=cfg.latency_gap,
                budget=cfg.latency_budget,
                timeout=10.0,
            )
            calls = calls_delta(before, self.broker.command_calls())
            starts = [float(x) for x in self._signal.lrange(counter.LATENCY, 0, -1)]
            gets = reply["get_seconds"]
            row.update(trials=len(gets), errors=reply["errors"], calls=per_task(calls, len(gets)))
            for name, values in (("start", starts), ("get", gets)):
                for q in (0.5, 0.99):
                    value = percentile(values, q)
                    row[f"{name}_p{round(q * 100)}_ms"] = None if value is None else value * 1000
            row["rss_mib"] = worker.rss() / MiB
        except BenchError as exc:
            row["error"] = str(exc)
        finally:
            worker.stop()
            if producer is not None:
                producer.close()
        return row

    def ping_floor(self) -> dict[str, Any]:
        """What any request pays here when it finds Redis idle: a redis-py PING after
        the same jittered pauses as W3's trials, and back to back. No framework."""
        import random

        import redis

        cfg, rng = self.config, random.Random(7)
        client = redis.Redis.from_url(f"{self.broker.url}/0")
        row: dict[str, Any] = {
            "config": "redis-py PING (no task), after the same pauses",
            "framework": "-",
            "load1": os.getloadavg()[0],
        }
        try:
            client.ping()
            for name, pause in (("start", True), ("get", False)):
                times = []
                for _ in range(min(cfg.trials, 300)):
                    if pause:
                        time.sleep(cfg.latency_gap * rng.uniform(0.5, 1.5))
                    begun = time.perf_counter()
                    client.ping()
                    times.append(time.perf_counter() - begun)
                for q in (0.5, 0.99):
                    value = percentile(times, q)
                    row[f"{name}_p{round(q * 100)}_ms"] = None if value is None else value * 1000
            row["trials"] = min(cfg.trials, 300)
        finally:
            client.close()
        return row

    # -- W4: enqueue rate ------------------------------------------------------------

    def enqueue(self, framework: str) -> list[dict[str, Any]]:
        n = self.config.enqueue_n
        rows: list[dict[str, Any]] = []
        self.fresh()
        producer: Producer | None = None
        try:
            producer = self.producer(framework, False, "W4")
            for op in ("single", "bulk"):
                self.fresh()
                before, cpu = self.broker.command_calls(), self.broker.cpu_seconds()
                reply = producer.call(op, n=n)
                cpu = self.broker.cpu_seconds() - cpu
                calls = calls_delta(before, self.broker.command_calls())
                rows.append(
                    {
                        "framework": framework,
                        "load1": os.getloadavg()[0],
                        "mode": "one at a time" if op == "single" else "bulk",
                        "api": reply["api"],
                        "n": n,
                        "seconds": reply["seconds"],
                        "per_s": n / reply["seconds"],
                        "calls": per_task(calls, n),
                        "redis_cpu_us": cpu / n * 1e6,
                    }
                )
        except BenchError as exc:
            rows.append({"framework": framework, "error": str(exc)})
        finally:
            if producer is not None:
                producer.close()
        return rows

    # -- W6: delayed backlog ---------------------------------------------------------

    def backlog(self, spec: Spec) -> dict[str, Any]:
        cfg = self.config
        taskq = spec.framework == "taskq"
        size = cfg.backlog_taskq if taskq else cfg.backlog_others
        row = self.row(spec)
        row.update(backlog=size, due=cfg.due_n_taskq if taskq else cfg.due_n)
        self.fresh()
        producer: Producer | None = None
        worker = self.worker(spec, False, "W6").start()
        try:
            producer = self.producer(spec.framework, False, "W6")
            producer.call("single", n=1)
            if not self.wait_done(1, 60.0, worker):
                raise BenchError(f"the worker ran no task within 60 s:\n{worker.tail()}")
            time.sleep(1.0)
            row["rss_before_mib"] = worker.rss() / MiB
            self._load_backlog(producer, size, row)
            self._due_phase(producer, worker, row)
            row["rss_after_mib"] = worker.rss() / MiB
            row["peak_rss_mib"] = worker.peak_rss / MiB
        except BenchError as exc:
            row["error"] = str(exc)
        finally:
            worker.stop()
            if producer is not None:
                producer.close()
        return row

    def _load_backlog(self, producer: Producer, size: int, row: dict[str, Any]) -> None:
        before = self.broker.command_calls()
        load = producer.call("delayed", n=size, eta=time.time() + 3600, backlog=True)
        row.update(load_s=load["seconds"], load_api=load["api"])
        row["load_calls"] = per_task(calls_delta(before, self.broker.command_calls()), size)
        row["redis_used_mib"] = self.broker.used_memory() / MiB

    def _due_phase(self, producer: Producer, worker: Worker, row: dict[str, Any]) -> None:
        """Publish ``row["due"]`` tasks all due at one instant a little ahead, then time
        from that instant until the store has promoted them all (taskq) and until the
        last one ran. Each records how late it started."""
        n = row["due"]
        # Due once all are published: estimate the send rate from the backlog load
        # (capped: taskq loads its backlog by a faster path than eta= sends).
        per_s = min(row["backlog"] / max(row["load_s"], 1e-6), 1500.0)
        due = time.time() + 2.0 + 1.5 * n / per_s
        self._signal.delete(counter.LATENCY, counter.LAST)
        before = self.broker.command_calls()
        producer.call("delayed", n=n, eta=due, task="latency")
        row["published_before_due"] = time.time() < due
        polls = self._promotion(due, worker, row) if row["framework"] == "taskq" else 0
        finished = self.wait_done(
            1 + n, max(0.0, due - time.time()) + self.config.due_timeout, worker
        )
        calls = calls_delta(before, self.broker.command_calls())
        if polls:  # the bench's own ZCOUNTs are not the framework's work
            calls["zcount"] -= polls
            calls = {k: v for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v}
        late = [float(x) for x in self._signal.lrange(counter.LATENCY, 0, -1)]
        row.update(completed=len(late), timed_out=not finished, due_calls=per_task(calls, n))
        if late:
            row["late_p50_s"] = percentile(late, 0.5)
            row["late_p99_s"] = percentile(late, 0.99)
            last = self._signal.zrange(counter.LAST, -1, -1, withscores=True)
            row["drain_s"] = float(last[0][1]) - due
            row["ran_per_s"] = len(late) / row["drain_s"] if row["drain_s"] > 0 else None

    def _promotion(self, due: float, worker: Worker, row: dict[str, Any]) -> int:
        """taskq: from the due instant, count the delayed store's due members every
        ``PROMOTE_POLL`` s until none is left. ``promote_s`` runs from the due instant to
        the reply of the first poll that saw none (an upper bound, so ``promoted_per_s``
        errs low by at most a poll); ``promote_start_s`` to the first poll that saw
        fewer than all; ``promote_trace`` lists (seconds after due, count) at each
        change, which shows each promoting call. Returns how many ZCOUNTs it sent."""
        client = self.broker.client(DB["taskq"])
        # Scores are the ETA as the message carries it (microseconds); the backlog sits
        # an hour later, so everything below due + 1 s is this batch.
        upper = due + 1.0
        deadline = due + self.config.due_timeout
        while (left := due - time.time()) > 0:
            time.sleep(min(left, 0.05))
        polls, sampled = 0, 0.0
        trace: list[tuple[float, int]] = []
        row["promote_trace"] = trace
        try:
            while True:
                count = client.zcount(TASKQ_DELAYED, "-inf", upper)
                now = time.time()
                polls += 1
                if not trace or count != trace[-1][1]:
                    trace.append((round(now - due, 4), count))
                if count < row["due"] and "promote_start_s" not in row:
                    row["promote_start_s"] = now - due
                if count == 0:
                    break
                if now > deadline:
                    row["promote_left"] = count
                    return polls
                if now - sampled > 0.25:
                    worker.rss()
                    sampled = now
                time.sleep(PROMOTE_POLL)
        finally:
            client.close()
        if polls == 1:
            # Gone before the first look (published too late): no rate to report.
            row["promote_note"] = "promoted before the first poll"
            return polls
        row["promote_s"] = now - due
        row["promoted_per_s"] = row["due"] / row["promote_s"]
        return polls
