"""What the number of queues a worker consumes costs each fetch, in Redis and in the client.

``bench/.venv/bin/python -m bench.fetch_keys_micro [--port 6392] [--calls 1500]`` starts a
throwaway Redis on ``--port``, fills queue ``q0`` and times ``RedisBroker.fetch`` of 50
messages on 1, 10, 100 and 1,000 queues, always starting the rotation at ``q0`` (which
holds the backlog), so every call pops the same 50 messages and differs only in the
list keys it names (four a queue, one a priority step): Redis CPU per call from
``INFO cpu``, client wall time per call. W8 measures the same through a whole worker.
"""

from __future__ import annotations

import argparse
import time

from bench.procs import RedisServer
from taskq.broker.base import Envelope
from taskq.broker.redis.broker import RedisBroker

BATCH = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=6392)
    parser.add_argument("--calls", type=int, default=1500)
    args = parser.parse_args()
    server = RedisServer(args.port, "fetch-keys").start()
    client = server.client()
    envelope = Envelope(
        body=b'{"n": 1, "pad": "' + b"x" * 700 + b'"}',
        content_type="application/json",
        headers={"id": "1"},
        properties={"correlation_id": "1"},
    )
    try:
        for count in (1, 10, 100, 1000):
            queues = [f"q{i}" for i in range(count)]
            server.flush()
            broker = RedisBroker(f"{server.url}/0", consumer_id=f"micro-{count}")
            for _ in range(args.calls * BATCH // 10_000 + 1):
                broker.publish_many([(envelope, "q0", None)] * 10_000)
            cpu = client.info("cpu")
            before = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
            started = time.perf_counter()
            for _ in range(args.calls):
                broker._rotation = 0  # start at q0: the same 50 pops every call
                got = broker.fetch(queues, BATCH, 0)
                broker.ack_soon(got)  # sent with the next fetch, as a worker does
            seconds = time.perf_counter() - started
            cpu = client.info("cpu")
            used = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]) - before
            broker.close()
            print(
                f"{count:5,} queues ({4 * count + 5:5,} keys): Redis CPU "
                f"{used / args.calls * 1e6:6.0f} us a call, {used / args.calls / BATCH * 1e6:5.1f}"
                f" us a task; client {seconds / args.calls * 1e6:6.0f} us a call"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
