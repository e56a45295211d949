"""Microbenchmark of RedisBroker: publish rate, drain rate, Redis calls per message, idle latency.

Usage: .venv/bin/python bench/redis_broker_micro.py [--url redis://127.0.0.1:6379/0]
       [--messages 50000] [--batch 500] [--samples 300]

Prints figures; not a test. Uses a unique queue and key prefix and deletes them
afterwards. Redis-side counts come from INFO commandstats deltas, so other clients
of the same server inflate them (run it on a quiet server for clean numbers).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid

import redis

from taskq.broker.base import Envelope
from taskq.broker.redis import RedisBroker


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    changed = {name: after[name] - before.get(name, 0) for name in after}
    changed.pop("info", None)  # our own measurement
    return {name: count for name, count in changed.items() if count}


def report(title: str, count: int, seconds: float, round_trips: int, calls: dict[str, int]) -> None:
    total = sum(calls.values())
    print(f"{title}: {count} messages in {seconds:.3f} s = {count / seconds:,.0f} msg/s")
    print(f"  client round trips: {round_trips} ({round_trips / count:.4f} per message)")
    top = ", ".join(f"{name}={n}" for name, n in sorted(calls.items(), key=lambda kv: -kv[1]))
    print(
        f"  Redis commands (incl. inside scripts): {total} ({total / count:.4f} per message): {top}"
    )


def bench_throughput(url: str, messages: int, batch: int) -> None:
    unique = uuid.uuid4().hex[:10]
    queue = f"bench-{unique}"
    broker = RedisBroker(url, consumer_id="bench", options={"key_prefix": f"taskq-bench-{unique}:"})
    raw = redis.Redis.from_url(url)
    body = b'[[2, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
    envelope = Envelope(
        body=body,
        content_type="application/json",
        headers={"lang": "py", "task": "tasks.add", "id": "x" * 36, "retries": 0},
        properties={"correlation_id": "x" * 36},
    )
    try:
        before = command_calls(raw)
        started = time.perf_counter()
        broker.publish_many([(envelope, queue, None)] * messages)
        elapsed = time.perf_counter() - started
        report("publish_many", messages, elapsed, 1, delta(before, command_calls(raw)))

        before = command_calls(raw)
        drained, round_trips = 0, 0
        started = time.perf_counter()
        while batch_ := broker.fetch([queue], batch, 0):
            broker.ack(batch_)
            drained += len(batch_)
            round_trips += 2
        round_trips += 1  # the final, empty fetch
        elapsed = time.perf_counter() - started
        report(
            f"fetch({batch})+ack drain",
            drained,
            elapsed,
            round_trips,
            delta(before, command_calls(raw)),
        )
    finally:
        broker.close()
        keys = list(raw.scan_iter(match=f"*{unique}*", count=1000))
        if keys:
            raw.delete(*keys)


def bench_idle_latency(url: str, samples: int) -> None:
    """LPUSH (by a plain client, as a Celery producer would) to fetch returning."""
    unique = uuid.uuid4().hex[:10]
    queue = f"bench-{unique}"
    broker = RedisBroker(url, consumer_id="bench", options={"key_prefix": f"taskq-bench-{unique}:"})
    producer = redis.Redis.from_url(url)
    payload = RedisBroker.__module__  # any text; the broker hands malformed payloads back too
    latencies: list[float] = []
    got = threading.Event()
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            deliveries = broker.fetch([queue], 100, 1.0)
            if deliveries:
                latencies.append(time.perf_counter() - sent[0])
                broker.ack(deliveries)
                got.set()

    sent = [0.0]
    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        for _ in range(samples):
            time.sleep(0.005)  # let the consumer block again
            got.clear()
            sent[0] = time.perf_counter()
            producer.lpush(queue, payload)
            if not got.wait(5):
                raise RuntimeError("message not fetched within 5 s")
    finally:
        stop.set()
        thread.join(5)
        broker.close()
        keys = list(producer.scan_iter(match=f"*{unique}*", count=1000))
        if keys:
            producer.delete(*keys)
    ms = sorted(x * 1000 for x in latencies)
    p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    print(
        f"idle latency, LPUSH -> fetch returns ({len(ms)} samples): "
        f"p50 {statistics.median(ms):.3f} ms, p90 {p(0.9):.3f} ms, p99 {p(0.99):.3f} ms, "
        f"max {ms[-1]:.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    bench_throughput(args.url, args.messages, args.batch)
    bench_idle_latency(args.url, args.samples)


if __name__ == "__main__":
    main()
