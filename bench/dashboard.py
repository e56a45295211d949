"""The dashboard under load: 1,000 events/s for 60 s through a real broker.

    .venv/bin/python -m bench.dashboard                    # 1,000 events/s, 60 s
    .venv/bin/python -m bench.dashboard --rate 2000 --seconds 30 --max-tasks 5000

Starts a throwaway Redis (``--redis-port``, never the shared 6379) and
``taskq dashboard`` on it (``--port``), then publishes Celery-format events on
the ``celeryev`` exchange as a fleet of workers would: every 10 ms a ``task.multi``
message holding the next batch of ``task-received``, ``task-started`` and
``task-succeeded`` events (three per task, a new task id each time, with args,
kwargs and result reprs), plus each fake worker's ``worker-heartbeat`` every 2 s.
Meanwhile one viewer does what an open Tasks page does: it listens on ``/live``
and fetches the page's fragment after each message.

Every 5 s it reads the dashboard's ``/api/stats``: events applied, and the lag
from each event's ``timestamp`` (stamped when published) to the dashboard having
applied it, as the p50/p99/max of the last 10,000 events (the last 10 s at 1,000
events/s, so the samples cover the whole run); and the dashboard's RSS
(``/proc/<pid>/status``). The report gives the worst window's p99, the RSS at the
start and its peak, and whether every event published was applied.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import kombu

from bench.procs import BenchError, RedisServer
from taskq.events import event as ev

TOKEN = "bench-" + uuid.uuid4().hex
BATCH_EVERY = 0.01  # seconds between published messages
WORKERS = 4  # fake worker host names the events come from

APP = """
from taskq import App

app = App("benchdash", broker={url!r}, backend={url!r})
"""


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def get(base: str, path: str, timeout: float = 5.0) -> bytes:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def task_events(n: int, now: float, clock: int) -> list[dict[str, Any]]:
    task_id = str(uuid.uuid4())
    host = f"bench{n % WORKERS}@load"
    common = {"uuid": task_id, "hostname": host, "utcoffset": ev.utcoffset(), "pid": 1000 + n % 4}
    return [
        {
            **common,
            "type": "task-received",
            "name": f"proj.task{n % 20}",
            "args": f"({n}, 'payload-{n}')",
            "kwargs": "{'flag': True}",
            "root_id": task_id,
            "parent_id": None,
            "retries": 0,
            "timestamp": now,
            "clock": clock,
        },
        {**common, "type": "task-started", "timestamp": now, "clock": clock + 1},
        {
            **common,
            "type": "task-succeeded",
            "result": f"'result of task {n}'",
            "runtime": 0.0012,
            "timestamp": now,
            "clock": clock + 2,
        },
    ]


def publish(url: str, rate: int, seconds: float, stop: threading.Event) -> int:
    """Publish ``rate`` events a second for ``seconds``; return how many were sent."""
    per_batch = max(3, round(rate * BATCH_EVERY / 3) * 3)
    sent, n, clock = 0, 0, 1
    with kombu.Connection(url) as conn:
        exchange = ev.exchange(conn.transport.driver_type)
        producer = kombu.Producer(conn.channel(), exchange=exchange, serializer="json")
        start = time.monotonic()
        next_beat = 0.0
        while not stop.is_set():
            elapsed = time.monotonic() - start
            if elapsed >= seconds:
                break
            now = time.time()
            if elapsed >= next_beat:
                for w in range(WORKERS):
                    beat = ev.make(
                        "worker-heartbeat",
                        hostname=f"bench{w}@load",
                        freq=2.0,
                        active=1,
                        processed=n,
                        loadavg=list(os.getloadavg()),
                        utcoffset=ev.utcoffset(),
                        clock=clock,
                        **ev.SOFTWARE_INFO,
                    )
                    producer.publish(beat, routing_key="worker.heartbeat")
                    sent += 1
                next_beat += 2.0
            batch: list[dict[str, Any]] = []
            while len(batch) < per_batch:
                batch.extend(task_events(n, now, clock))
                n, clock = n + 1, clock + 3
            producer.publish(batch, routing_key="task.multi")
            sent += len(batch)
            # Paced against the clock, so a slow publish is made up for, not added.
            due = start + (sent / rate)
            pause = due - time.monotonic()
            if pause > 0:
                stop.wait(pause)
    return sent


def viewer(base: str, stop: threading.Event, fetched: list[int]) -> None:
    """What an open Tasks page does: follow /live, fetch the fragment after each message."""
    request = urllib.request.Request(base + "/live", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as stream:
        while not stop.is_set():
            line = stream.readline()
            if not line:
                return
            if line.startswith(b"data:"):
                get(base, "/tasks?fragment=1", timeout=10)
                fetched[0] += 1


def run(args: argparse.Namespace) -> dict[str, Any]:
    import subprocess

    redis_server = RedisServer(args.redis_port, "dashboard-bench").start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    (workdir / "benchdash.py").write_text(APP.format(url=redis_server.url + "/0"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")}
    env["TASKQ_DASHBOARD_TOKEN"] = TOKEN
    argv = [sys.executable, "-m", "taskq", "-A", "benchdash", "dashboard"]
    argv += ["--port", str(args.port), "--max-tasks", str(args.max_tasks)]
    dashboard = subprocess.Popen(argv, cwd=workdir, env=env)
    base = f"http://127.0.0.1:{args.port}"
    stop = threading.Event()
    try:
        for _ in range(200):
            try:
                get(base, "/api/stats")
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise BenchError("the dashboard did not answer within 10 s")
        rss_start = rss_kib(dashboard.pid)
        fetched = [0]
        threading.Thread(target=viewer, args=(base, stop, fetched), daemon=True).start()
        sent_box: list[int] = []
        publisher = threading.Thread(
            target=lambda: sent_box.append(
                publish(redis_server.url + "/0", args.rate, args.seconds, stop)
            ),
            daemon=True,
        )
        load_before = os.getloadavg()
        publisher.start()
        samples = []
        while publisher.is_alive():
            publisher.join(5.0)
            stats = json.loads(get(base, "/api/stats"))
            stats["rss_kib"] = rss_kib(dashboard.pid)
            stats["at"] = round(time.monotonic(), 1)
            samples.append(stats)
            print(
                f"  applied {stats['events']:>7}  lag p99 {stats['lag']['p99'] or 0:.3f}s "
                f"max {stats['lag']['max'] or 0:.3f}s  tasks {stats['tasks']:>6}  "
                f"RSS {stats['rss_kib'] / 1024:.1f} MiB",
                flush=True,
            )
        sent = sent_box[0] if sent_box else 0
        deadline = time.monotonic() + 10
        final = json.loads(get(base, "/api/stats"))
        while final["events"] < sent and time.monotonic() < deadline:
            time.sleep(0.2)
            final = json.loads(get(base, "/api/stats"))
        load_after = os.getloadavg()
    finally:
        stop.set()
        dashboard.terminate()
        dashboard.wait(10)
        redis_server.stop()
    p99s = [s["lag"]["p99"] for s in samples if s["lag"]["p99"] is not None]
    return {
        "rate": args.rate,
        "seconds": args.seconds,
        "max_tasks": args.max_tasks,
        "sent": sent,
        "applied": final["events"],
        "lag_p99_worst_window_s": max(p99s) if p99s else None,
        "lag_p99_median_window_s": sorted(p99s)[len(p99s) // 2] if p99s else None,
        "lag_max_s": max(s["lag"]["max"] or 0 for s in samples) if samples else None,
        "rss_start_mib": round((rss_start or 0) / 1024, 1),
        "rss_peak_mib": round(max(s["rss_kib"] or 0 for s in samples) / 1024, 1),
        "rss_end_mib": round((samples[-1]["rss_kib"] or 0) / 1024, 1) if samples else None,
        "tasks_kept": final["tasks"],
        "fragments_fetched": fetched[0],
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="events per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-tasks", type=int, default=10_000)
    parser.add_argument("--port", type=int, default=6510, help="the dashboard's port")
    parser.add_argument("--redis-port", type=int, default=6511, help="the bench's own Redis")
    args = parser.parse_args()
    try:
        report = run(args)
    except BenchError as exc:
        sys.exit(f"bench.dashboard: {exc}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
