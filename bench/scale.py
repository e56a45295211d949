"""W8, cost as work grows: the same no-op drain with more queues, a deep backlog and
more worker processes, measured per task in a steady window.

Cases (``CASES``), each against the "1 queue" case of the same framework:

- ``1 queue``: one worker process on one queue, a small backlog (1.25 x the window).
- ``10 queues`` / ``100 queues``: the same worker given ``-Q bench001,...``, the
  backlog spread evenly over the queues.
- ``1,000,000 queued``: one queue holding ``--scale-backlog`` messages.
- ``8 processes``: eight processes on one queue (taskq: eight ``-P solo`` workers;
  Celery ``-P prefork -c 8``; Dramatiq ``-p 8 -t 1``; Huey ``-w 8 -k process``).

How a case runs. The framework's own producer sends one message to each queue
(``bench.scale_seed``); the bench copies it, with fresh ids, into a staging list per
queue (fast enough for a million: no framework's producer is). The workers start
on empty queues and the bench waits until they idle; then one MULTI renames every
staging list onto its queue, so all workers see the whole backlog at once and none
of their start-up overlaps the figures. The window opens once ``window // 8`` tasks
are done and every process has run one, and closes ``window`` tasks later; the
backlog is never empty inside it. Over the window: tasks/s, Redis CPU per task
(``INFO cpu``: used_cpu_sys + used_cpu_user), Redis commands and their time per
task (``INFO commandstats``: calls and usec, inner script commands included), the
workers' CPU per task (psutil, the whole process trees) and RSS per process. Before
the release, what the idle workers cost Redis: its CPU over ``IDLE_SAMPLE`` seconds
minus the same with no worker running (the server's own timers).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import redis

from bench import counter, pyspy
from bench.procs import BIN, BenchError, Worker
from bench.report import Column, _get, _num
from bench.specs import DB, QUEUE, Spec
from bench.workloads import Bench, MiB

#: A UUID in its text form: the ids a template message carries.
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
STAGED = ".w8staged"  # suffix of the staging list of a queue's list
PUSH_CHUNK = 5_000  # values per LPUSH / HSET while staging
#: ``--scale-profile N``: taskq's worker in case N (1-5) runs under py-spy; samples
#: of a worker blocked waiting for messages (before the release) are left out.
PYSPY = [str(BIN / "py-spy"), "record", "--idle", "--nonblocking", "--rate", "250"]
BLOCKED = frozenset({"Fetcher._block_then_fetch"})
IDLE_SAMPLE = 2.0  # seconds of Redis CPU sampled with no worker, then idle workers


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    queues: int = 1
    big: bool = False  # the backlog is --scale-backlog messages
    processes: int = 1


CASES = (
    Case("1 queue"),
    Case("10 queues", queues=10),
    Case("100 queues", queues=100),
    Case("1,000,000 queued", big=True),
    Case("8 processes", processes=8),
)


def queue_names(count: int) -> list[str]:
    return [QUEUE] if count == 1 else [f"{QUEUE}{i:03d}" for i in range(1, count + 1)]


# -- the workers of a case ---------------------------------------------------------


def argvs(framework: str, case: Case) -> list[list[str]]:
    """The command line of each worker process the case starts."""
    names = queue_names(case.queues)
    if framework == "huey" and case.queues > 1:
        raise BenchError("skipped: huey has one queue per Huey instance (no -Q)")
    many = case.processes > 1
    if framework == "taskq":
        spec = Spec("taskq", "", 1, ("-P", "solo"))
        return [
            _queues([*spec.argv(), "-n", f"w8-{i}@%h"] if many else spec.argv(), names)
            for i in range(case.processes)
        ]
    pools = {
        "celery": (("-P", "solo"), ("-P", "prefork", "-c", "8")),
        "dramatiq": (("-p", "1", "-t", "1"), ("-p", "8", "-t", "1")),
        "huey": (("-w", "1", "-k", "thread"), ("-w", "8", "-k", "process")),
    }
    spec = Spec(framework, "", case.processes, pools[framework][many])
    return [_queues(spec.argv(), names)]


def _queues(argv: list[str], names: list[str]) -> list[str]:
    if "-Q" not in argv:  # huey: one queue, named by the app
        return argv
    at = argv.index("-Q")
    if "dramatiq" in os.path.basename(argv[0]):  # -Q takes the queues as separate words
        return [*argv[:at], "-Q", *names, *argv[at + 2 :]]
    return [*argv[:at], "-Q", ",".join(names), *argv[at + 2 :]]


def label(framework: str, case: Case) -> str:
    if case.processes == 1:
        one = {
            "taskq": "taskq -P solo",
            "celery": "celery -P solo",
            "dramatiq": "dramatiq -p 1 -t 1",
            "huey": "huey -w 1 -k thread",
        }
        return one[framework]
    many = {
        "taskq": "8 x taskq -P solo",
        "celery": "celery -P prefork -c 8",
        "dramatiq": "dramatiq -p 8 -t 1",
        "huey": "huey -w 8 -k process",
    }
    return many[framework]


# -- loading: seed through the framework, copy, release at once ----------------------


def stage(client: redis.Redis, counts: list[int]) -> tuple[list[tuple[str, str]], float]:
    """Copy the one seeded message of each queue list ``counts[i]`` times (fresh ids)
    into its staging list; return (staging key, queue key) pairs and the seconds taken.

    Dramatiq keeps the message in ``<list>.msgs`` and only its id in the list; the copies
    follow that layout (the id is one of the message's UUIDs, so it is renewed with them).
    """
    started = time.perf_counter()
    lists = sorted(k.decode() for k in client.scan_iter(count=1000) if client.type(k) == b"list")
    if len(lists) != len(counts):
        raise BenchError(f"expected {len(counts)} seeded queue lists, found {lists}")
    pairs = []
    for key, count in zip(lists, counts, strict=True):
        element = client.lindex(key, 0)
        assert element is not None
        table = f"{key}.msgs"
        template = client.hget(table, element) if client.type(table) == b"hash" else None
        client.delete(key)
        if template is not None:
            client.hdel(table, element)
        _copy(client, key + STAGED, template or element, table if template else None, count)
        pairs.append((key + STAGED, key))
    return pairs, time.perf_counter() - started


def _copy(client: redis.Redis, staged: str, template: bytes, table: str | None, n: int) -> None:
    parts = UUID.split(template)
    found = UUID.findall(template)
    distinct = list(dict.fromkeys(found))
    slots = [distinct.index(u) for u in found]
    # A fresh id per copy: a random prefix per distinct UUID, the copy's number at the end.
    prefixes = [uuid.uuid4().hex[:8] + "-" + str(uuid.uuid4())[9:24] for _ in distinct]
    pipe = client.pipeline(transaction=False)
    for start in range(0, n, PUSH_CHUNK):
        batch = []
        for i in range(start, min(n, start + PUSH_CHUNK)):
            ids = [f"{p}{i:012x}".encode() for p in prefixes]
            out = [parts[0]]
            for slot, part in zip(slots, parts[1:], strict=True):
                out += (ids[slot], part)
            batch.append((ids, b"".join(out)))
        if table is None:
            pipe.lpush(staged, *[message for _, message in batch])
        else:  # dramatiq: the list holds the redis_message_id, the hash the message
            pipe.hset(table, mapping={ids[0]: message for ids, message in batch})
            pipe.rpush(staged, *[ids[0] for ids, _ in batch])
        if len(pipe) >= 20:
            pipe.execute()
    pipe.execute()


def release(client: redis.Redis, pairs: list[tuple[str, str]]) -> None:
    pipe = client.pipeline(transaction=True)
    for staged, key in pairs:
        pipe.rename(staged, key)
    pipe.execute()


# -- measuring ------------------------------------------------------------------------


@dataclasses.dataclass
class Snapshot:
    at: float
    done: int
    redis_cpu: float
    commands: dict[str, dict[str, float]]
    worker_cpu: float


class Scale:
    """Runs W8 on a ``Bench`` (its servers, sizes, logs and helpers)."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.config = bench.config

    def rows(self, frameworks: list[str], show: Any) -> list[dict[str, Any]]:
        """Every case of every framework, ``--scale-rounds`` times, the cases of a
        framework interleaved round by round (so a noisy minute spreads over all of
        them); each row holds the median of each per-task figure and every round's."""
        rows = []
        for framework in frameworks:
            runs: dict[str, list[dict[str, Any]]] = {case.name: [] for case in CASES}
            for _ in range(max(1, self.config.scale_rounds)):
                for case in CASES:
                    runs[case.name].append(show(self.case(framework, case)))
            rows += [_median(results) for results in runs.values()]
        return compare(rows)

    def case(self, framework: str, case: Case) -> dict[str, Any]:
        cfg, bench = self.config, self.bench
        window = cfg.scale_n if framework == "taskq" else cfg.scale_n_others
        backlog = max(cfg.scale_backlog, window * 2) if case.big else window + window // 4
        if case.processes > 1:
            backlog += window // 2  # every process must start before the window opens
        row: dict[str, Any] = {
            "framework": framework,
            "case": case.name,
            "config": label(framework, case),
            "queues": case.queues,
            "processes": case.processes,
            "backlog": backlog,
            "window": window,
            "load1": os.getloadavg()[0],
        }
        workers: list[Worker] = []
        try:
            lines = argvs(framework, case)
        except BenchError as exc:
            return {**row, "skipped": str(exc).removeprefix("skipped: ")}
        bench.fresh()
        client = bench.broker.client(DB[framework])
        try:
            names = queue_names(case.queues)
            self._seed(framework, names)
            counts = [backlog // len(names) + (i < backlog % len(names)) for i in range(len(names))]
            pairs, row["stage_s"] = stage(client, counts)
            env = {**bench.env(framework, False), "BENCH_QUEUES": ",".join(names)}
            alone = self._redis_cpu_rate(IDLE_SAMPLE)  # the server's own idle work
            stem = f"W8-{framework}-{re.sub(r'[^a-z0-9]+', '-', case.name)}"
            if framework == "taskq" and cfg.scale_profile == CASES.index(case) + 1:
                profile = bench.logs / f"{stem}.speedscope.json"
                spy = [*PYSPY, "--format", "speedscope", "--output", str(profile), "--"]
                lines = [[*spy, *argv] for argv in lines]
                row["profiled"] = str(profile)
            for i, argv in enumerate(lines):
                workers.append(Worker(argv, env, bench.logs / f"{stem}-{i}.log").start())
            row["idle_wait_s"] = self._wait_idle(workers)
            row["idle_redis_ms_per_s"] = self._redis_cpu_rate(IDLE_SAMPLE) - alone
            for worker in workers:
                worker.peak_rss = 0
            row["rss_idle_mib"] = sum(w.rss() for w in workers) / MiB / case.processes
            row["redis_used_mib"] = bench.broker.used_memory() / MiB
            release(client, pairs)
            row.update(self._measure(workers, window, case.processes))
        except BenchError as exc:
            row["error"] = str(exc)
        finally:
            if "profiled" in row:
                _stop_profiled(workers)
            for worker in workers:
                worker.stop()
            client.close()
        if "profiled" in row and "tasks_per_s" in row:
            try:
                row["profile"] = pyspy.summarise(Path(row["profiled"]), idle=BLOCKED)
                row["profile"]["tasks_per_s_under_profiler"] = row["tasks_per_s"]
            except (OSError, ValueError) as exc:
                row["profile"] = {"error": f"py-spy wrote no usable profile: {exc}"}
        return row

    def _seed(self, framework: str, names: list[str]) -> None:
        import subprocess
        import sys

        from bench.procs import ROOT

        done = subprocess.run(
            [sys.executable, "-m", "bench.scale_seed", framework, ",".join(names)],
            env=self.bench.env(framework, False),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode:
            raise BenchError(f"seeding {framework} failed: {done.stderr.strip()[-500:]}")

    def _redis_cpu_rate(self, seconds: float) -> float:
        """Milliseconds of CPU a second the broker's Redis uses over ``seconds``."""
        before = self.bench.broker.cpu_seconds()
        time.sleep(seconds)
        return (self.bench.broker.cpu_seconds() - before) / seconds * 1000

    @staticmethod
    def _cpu(workers: list[Worker]) -> float:
        total = 0.0
        for worker in workers:
            for proc in worker.processes():
                try:
                    times = proc.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += times.user + times.system
        return total

    def _wait_idle(self, workers: list[Worker], longest: float = 20.0) -> float:
        """Until the workers' CPU use over 0.5 s is under 10% of a core (start-up
        done), at least 1 s, at most ``longest`` s; returns the seconds waited."""
        started = time.monotonic()
        time.sleep(1.0)
        before = self._cpu(workers)
        while time.monotonic() - started < longest:
            time.sleep(0.5)
            for worker in workers:
                if worker.exited() is not None:
                    raise BenchError(f"worker exited ({worker.exited()}):\n{worker.tail()}")
            now = self._cpu(workers)
            if now - before < 0.05:
                break
            before = now
        return time.monotonic() - started

    def _snapshot(self, workers: list[Worker]) -> Snapshot:
        server = self.bench.broker.client()
        try:
            cpu = server.info("cpu")
            stats = server.info("commandstats")
        finally:
            server.close()
        return Snapshot(
            at=time.monotonic(),
            done=self.bench.done_count(),
            redis_cpu=float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            commands={
                k.removeprefix("cmdstat_"): {"calls": v["calls"], "usec": v["usec"]}
                for k, v in stats.items()
            },
            worker_cpu=self._cpu(workers),
        )

    def _measure(self, workers: list[Worker], window: int, processes: int) -> dict[str, Any]:
        signal = self.bench._signal
        warm = max(window // 8, 1)
        timeout = max(120.0, window / 100)
        released = time.monotonic()
        first: Snapshot | None = None
        sampled = 0.0
        while True:
            now = time.monotonic()
            if now - released > timeout:
                done = self.bench.done_count()
                raise BenchError(f"timed out: {done:,} tasks done in {timeout:.0f} s")
            for worker in workers:
                if worker.exited() is not None:
                    raise BenchError(f"worker exited ({worker.exited()}):\n{worker.tail()}")
            if now - sampled > 0.25:
                for worker in workers:
                    worker.rss()
                sampled = now
            done = self.bench.done_count()
            if first is None:
                started = signal.zcard(counter.FIRST)
                if done >= warm and (started >= processes or done >= 3 * warm):
                    first = self._snapshot(workers)
                    ran = started
            elif done >= first.done + window:
                last = self._snapshot(workers)
                break
            time.sleep(0.005)
        return self._figures(first, last, workers, processes, ran)

    def _figures(
        self, a: Snapshot, b: Snapshot, workers: list[Worker], processes: int, ran: int
    ) -> dict[str, Any]:
        tasks = b.done - a.done
        seconds = b.at - a.at
        calls = {
            name: (
                stats["calls"] - a.commands.get(name, {}).get("calls", 0),
                stats["usec"] - a.commands.get(name, {}).get("usec", 0),
            )
            for name, stats in b.commands.items()
            if name not in ("info",)
        }
        calls = {k: v for k, v in calls.items() if v[0]}
        by_time = sorted(calls.items(), key=lambda kv: -kv[1][1])
        rss = sum(w.rss() for w in workers)
        peak = sum(w.peak_rss for w in workers)
        return {
            "tasks": tasks,
            "seconds": seconds,
            "tasks_per_s": tasks / seconds,
            "redis_cpu_us": (b.redis_cpu - a.redis_cpu) / tasks * 1e6,
            "redis_cmds": sum(c for c, _ in calls.values()) / tasks,
            "redis_cmd_us": sum(u for _, u in calls.values()) / tasks,
            "top_commands": {k: {"calls": c / tasks, "us": u / tasks} for k, (c, u) in by_time[:6]},
            "worker_cpu_us": (b.worker_cpu - a.worker_cpu) / tasks * 1e6,
            "rss_mib": rss / MiB / processes,
            "peak_rss_mib": peak / MiB / processes,
            "processes_ran": ran,
        }


def _stop_profiled(workers: list[Worker]) -> None:
    """SIGTERM the workers under py-spy (its children) and let py-spy write its file."""
    for worker in workers:
        for child in worker.processes()[1:2]:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(w.exited() is None for w in workers):
        time.sleep(0.1)


MEDIANS = ("tasks_per_s", "redis_cpu_us", "redis_cmds", "redis_cmd_us", "worker_cpu_us")


def _median(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The last round's row with the median of each of ``MEDIANS`` over the rounds
    that finished, and each round's rate and Redis CPU in ``rounds``."""
    done = [r for r in results if "tasks_per_s" in r]
    if len(results) == 1 or not done:
        return results[-1]
    row = dict(done[-1])
    for key in MEDIANS:
        row[key] = statistics.median(r[key] for r in done)
    row["rounds"] = [
        {k: r.get(k) for k in ("tasks_per_s", "redis_cpu_us", "load1", "error")} for r in results
    ]
    row["load1"] = max(r["load1"] for r in results)
    return row


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's rate and Redis CPU per task against its framework's "1 queue" row."""
    base = {r["framework"]: r for r in rows if r["case"] == CASES[0].name and "tasks_per_s" in r}
    for row in rows:
        first = base.get(row["framework"])
        if first is None or "tasks_per_s" not in row:
            continue
        row["rate_vs_1q"] = row["tasks_per_s"] / first["tasks_per_s"]
        row["cpu_vs_1q"] = row["redis_cpu_us"] / first["redis_cpu_us"]
    return rows


def _vs(key: str) -> Any:
    def cell(row: dict[str, Any]) -> str:
        if key not in row:
            return "-"
        return f"{(row[key] - 1) * 100:+.0f}%"

    return cell


COLUMNS: list[Column] = [
    ("Case", lambda r: r["case"]),
    ("Worker", lambda r: r["config"]),
    ("Backlog", _get("backlog")),
    ("Window", _get("tasks")),
    ("Tasks/s", _get("tasks_per_s")),
    ("vs 1 queue", _vs("rate_vs_1q")),
    ("Redis CPU us/task", _get("redis_cpu_us", 1)),
    ("vs 1 queue ", _vs("cpu_vs_1q")),
    ("Redis cmds/task", _get("redis_cmds", 2)),
    ("Worker CPU us/task", _get("worker_cpu_us", 0)),
    ("Idle: Redis CPU ms/s", _get("idle_redis_ms_per_s", 2)),
    ("RSS MiB/proc idle", _get("rss_idle_mib")),
    ("end (peak)", lambda r: f"{_num(r.get('rss_mib'))} ({_num(r.get('peak_rss_mib'))})"),
    (
        "Load",
        lambda r: (
            _num(r.get("load1"), 1)
            + (f" ({len(r['rounds'])} rounds, max)" if "rounds" in r else "")
        ),
    ),
]
COMMANDS: list[Column] = [
    ("Case", lambda r: r["case"]),
    ("Worker", lambda r: r["config"]),
    ("Redis cmd us/task", _get("redis_cmd_us", 1)),
    (
        "Top commands by time: us (calls) per task",
        lambda r: ", ".join(
            f"{k} {v['us']:.1f} ({v['calls']:.2f})" for k, v in r.get("top_commands", {}).items()
        ),
    ),
]
