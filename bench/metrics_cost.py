"""What ``taskq worker --metrics-port`` costs.

    python -m bench.metrics_cost --port 6520 [--n 10000] [--rounds 3]
    python -m bench.metrics_cost --micro

The first runs W1's drain (no-op tasks, results off) with and without it,
alternated, on the bench's own Redis servers, and prints each round's tasks/s, the
median of each configuration and the load average. ``--micro`` measures, in this
process, the CPU time (``time.process_time``, so other processes on the machine
count less) of ``Executor.execute`` for a no-op task with and without a meter, and
of one ``WorkerMeter.task_done``: the per-task cost without the noise of a drain.

Run it with an interpreter that has prometheus_client and psutil (the project's
dev environment plus psutil); bench/run's venv has no prometheus_client.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.procs import RedisServer
from bench.specs import Spec
from bench.workloads import Bench, Config

POOLS = {
    "solo": ("-P", "solo"),
    "prefork -c 2": ("-P", "prefork", "-c", "2"),
}
METRICS = ("--metrics-port", "0")


def micro(n: int = 20_000, rounds: int = 7) -> None:
    """CPU microseconds per no-op task through the executor, meter off and on."""
    from taskq import App
    from taskq.context import Context
    from taskq.metrics.worker import WorkerMeter
    from taskq.worker.executor import Executor
    from taskq.worker.policy import Policies

    app = App("micro", broker="memory://", task_ignore_result=True)
    app.task(name="bench.noop")(lambda: None)
    logging.getLogger("taskq").setLevel(logging.WARNING)
    policies = Policies(app.tasks, app.conf)
    meter = WorkerMeter(tempfile.mkdtemp(prefix="bench-metrics-"), app.tasks)
    executors = {"off": Executor(app, policies), "on": Executor(app, policies, meter)}
    ctx = Context(id="bench", task="bench.noop", args=(), kwargs={}, hostname="bench@host")
    costs: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for label, executor in executors.items():
            started = time.process_time()
            for _ in range(n):
                executor.execute(ctx)
            costs[label].append((time.process_time() - started) / n * 1e6)
    for label, values in costs.items():
        print(f"Executor.execute, meter {label:3}: {statistics.median(values):5.2f} us CPU a task")
    started = time.process_time()
    for _ in range(n):
        meter.task_done("bench.noop", "SUCCESS", 0.001)
    print(f"WorkerMeter.task_done alone: {(time.process_time() - started) / n * 1e6:5.2f} us CPU")
    print(f"(load average {os.getloadavg()[0]:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=6520, help="bench Redis; the signal uses +1")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pools", default=",".join(POOLS))
    parser.add_argument("--micro", action="store_true", help="the in-process CPU cost only")
    args = parser.parse_args()
    if args.micro:
        micro()
        return
    broker = RedisServer(args.port, "broker").start()
    signal = RedisServer(args.port + 1, "signal").start()
    logs = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    bench = Bench(Config(drain_n=args.n), broker, signal, logs)
    rates: dict[str, list[float]] = {}
    try:
        for round_ in range(args.rounds):
            for pool in args.pools.split(","):
                for extra in ((), METRICS):
                    label = f"taskq {pool}{' --metrics-port' if extra else ''}"
                    processes = 2 if "prefork" in pool else 1
                    spec = Spec("taskq", label, processes, (*POOLS[pool], *extra))
                    row = bench.drain(spec, args.n, False, "metrics")
                    rate = row.get("tasks_per_s")
                    print(
                        f"round {round_ + 1} {label:34} {rate or row.get('error'):>10.0f} tasks/s"
                        f"  load1 {row['load1']:.2f}"
                        if rate
                        else f"round {round_ + 1} {label:34} {row}",
                        flush=True,
                    )
                    if rate:
                        rates.setdefault(label, []).append(rate)
    finally:
        broker.stop()
        signal.stop()
    print(f"\nmedians (n={args.n}, {args.rounds} rounds, load now {os.getloadavg()[0]:.2f}):")
    for label, values in rates.items():
        print(f"  {label:34} {statistics.median(values):8.0f} tasks/s")


if __name__ == "__main__":
    main()
