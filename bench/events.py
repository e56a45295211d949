"""What events cost: drain throughput with task events on and off, and how soon a
listener sees ``task-succeeded`` after a task finished.

    bench/.venv/bin/python -m bench.events            # N = 20,000, 2 rounds, prefork -c 2
    bench/.venv/bin/python -m bench.events --pool threads --n 50000 --rounds 3

E1 drains a pre-loaded queue of no-op tasks (``bench.workloads.Bench.drain``, the
same measurement as W1) with a taskq worker started without and with ``-E``,
alternating off/on for ``--rounds`` rounds in the same run, on the bench's own
Redis; a receiver (``taskq.events.EventReceiver``) consumes every event during the
``-E`` drains, as Flower would. The ratio is the median on-throughput over the
median off-throughput. E2 is the time from a task's ``task-succeeded`` event being
stamped (the worker settling the task, right after it ran) to the receiver
holding it (its ``local_received``; one machine, one clock): once while idle (one
task every ``--gap`` seconds) and once inside the E1 drains (under full load).
``load1`` is the machine's 1-minute load before each drain (others share it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from typing import Any

import kombu

from bench.procs import ROOT, BenchError, RedisServer
from bench.specs import DB, QUEUE, Spec
from bench.workloads import Bench, Config, percentile
from taskq import App
from taskq.events import EventReceiver

RESULTS = ROOT / "bench" / "results"


class Listener:
    """An event receiver in a thread, keeping task-succeeded delays (seconds)."""

    def __init__(self, url: str) -> None:
        self.delays: list[float] = []
        self.events = 0
        self._stop = threading.Event()
        self._receiver = EventReceiver(lambda: kombu.Connection(url), self._on_event)
        self._thread = threading.Thread(target=self._receiver.run, args=(self._stop,), daemon=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        self.events += 1
        if event["type"] == "task-succeeded":
            self.delays.append(event["local_received"] - event["timestamp"])

    def __enter__(self) -> Listener:
        self._thread.start()
        if not self._receiver.ready.wait(10):
            raise BenchError("the event receiver did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _spec(pool: str, events: bool) -> Spec:
    args = ("-P", pool, "-c", "2") + (("-E",) if events else ())
    processes = 2 if pool == "prefork" else 1
    label = f"taskq -P {pool} -c 2" + (" -E" if events else "")
    return Spec("taskq", label, processes, args)


def drains(bench: Bench, url: str, pool: str, n: int, rounds: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    loaded: list[float] = []
    for _ in range(rounds):
        for events in (False, True):
            if events and not os.environ.get("BENCH_NO_LISTENER"):
                with Listener(url) as listener:
                    row = bench.drain(_spec(pool, True), n, False, "E1")
                    deadline = time.monotonic() + 10
                    while len(listener.delays) < n and time.monotonic() < deadline:
                        time.sleep(0.05)
                row["events_seen"] = listener.events
                row["succeeded_seen"] = len(listener.delays)
                loaded += listener.delays
            else:
                row = bench.drain(_spec(pool, events), n, False, "E1")
            rows.append(row)
            print(json.dumps({k: row.get(k) for k in ("config", "tasks_per_s", "load1")}))
    off = [r["tasks_per_s"] for r in rows if not r["config"].endswith("-E")]
    on = [r["tasks_per_s"] for r in rows if r["config"].endswith("-E")]
    return {
        "rows": rows,
        "off_median": statistics.median(off),
        "on_median": statistics.median(on),
        "ratio": statistics.median(on) / statistics.median(off),
        "loaded_latency_ms": _percentiles(loaded) if loaded else {"p50_ms": 0.0, "p99_ms": 0.0},
    }


def idle_latency(bench: Bench, url: str, pool: str, trials: int, gap: float) -> dict[str, Any]:
    bench.fresh()
    worker = bench.worker(_spec(pool, True), False, "E2").start()
    app = App("bench-events", broker=url, task_default_queue=QUEUE,
              broker_transport_options={"key_prefix": "taskq:"})  # fmt: skip
    try:
        with Listener(url) as listener:
            deadline = time.monotonic() + 30
            while listener.events == 0 and time.monotonic() < deadline:  # its first heartbeat
                time.sleep(0.05)
            for _ in range(trials):
                app.send_task("bench.apps.taskq_app.noop")
                time.sleep(gap)
            deadline = time.monotonic() + 10
            while len(listener.delays) < trials and time.monotonic() < deadline:
                time.sleep(0.05)
        return {"trials": trials, "seen": len(listener.delays), **_percentiles(listener.delays)}
    finally:
        app.close()
        worker.stop()


def _percentiles(delays: list[float]) -> dict[str, Any]:
    ms = [d * 1000 for d in delays]
    return {"n": len(ms), "p50_ms": percentile(ms, 0.5), "p99_ms": percentile(ms, 0.99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="tasks per drain")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs")
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads"])
    parser.add_argument("--trials", type=int, default=500, help="idle-latency tasks")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between them")
    parser.add_argument("--port", type=int, default=6394)
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = RESULTS / f"events-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    broker, signal = RedisServer(args.port, "broker"), RedisServer(args.port + 1, "signal")
    try:
        broker.start()
        signal.start()
        bench = Bench(Config(), broker, signal, logs)
        url = f"{broker.url}/{DB['taskq']}"
        result = {
            "command": "python -m bench.events " + " ".join(sys.argv[1:] if argv is None else argv),
            "cpus": os.cpu_count(),
            "load1_start": os.getloadavg()[0],
            "E1": drains(bench, url, args.pool, args.n, args.rounds),
            "E2_idle": idle_latency(bench, url, args.pool, args.trials, args.gap),
            "load1_end": os.getloadavg()[0],
        }
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.stop()
        broker.stop()
    out = RESULTS / f"events-{stamp}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    e1 = result["E1"]
    print(
        f"E1 ({args.pool}, N={args.n}): events off {e1['off_median']:.0f} tasks/s, on "
        f"{e1['on_median']:.0f} tasks/s, ratio {e1['ratio']:.2f}; "
        f"finish -> seen under load p50 {e1['loaded_latency_ms']['p50_ms']:.1f} ms, "
        f"p99 {e1['loaded_latency_ms']['p99_ms']:.1f} ms"
    )
    e2 = result["E2_idle"]
    print(
        f"E2 idle: finish -> seen p50 {e2['p50_ms']:.2f} ms, p99 {e2['p99_ms']:.2f} ms ({e2['seen']}/{e2['trials']})"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
