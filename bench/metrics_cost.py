"""What ``taskq worker --metrics-port`` costs: W1's drain (no-op tasks, results off)
with and without it, alternated, on the bench's own Redis servers.

    python -m bench.metrics_cost --port 6520 [--n 10000] [--rounds 3]

Run it with an interpreter that has prometheus_client and psutil (the project's
dev environment plus psutil); bench/run's venv has no prometheus_client. Prints
each round's tasks/s and the median of each configuration, with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from bench.procs import RedisServer
from bench.specs import Spec
from bench.workloads import Bench, Config

POOLS = {
    "solo": ("-P", "solo"),
    "prefork -c 2": ("-P", "prefork", "-c", "2"),
}
METRICS = ("--metrics-port", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=6520, help="bench Redis; the signal uses +1")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pools", default=",".join(POOLS))
    args = parser.parse_args()
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
