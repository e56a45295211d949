"""One module per framework, each defining the same three task bodies.

``noop()`` counts itself done; ``latency(sent)`` records the delay from ``sent``
(the producer's ``time.time()``) to its start, then counts itself done; ``sleepy()``
awaits ``asyncio.sleep(0.01)`` and counts itself done (taskq only: the asyncio pool);
``wait10()`` makes one blocking call to the W7 delay server (``bench.delay``) and
``await10()`` the same with ``await`` (taskq's asyncio pool).
Every module reads its configuration from the environment the bench sets:
``BENCH_BROKER_URL`` (Redis, or RabbitMQ with ``bench/run --broker amqp``),
``BENCH_BACKEND_URL`` (results: Redis), ``BENCH_SIGNAL_URL``, ``BENCH_QUEUE`` and
``BENCH_RESULTS`` ("1" stores results). None of them connects at import.
"""

from __future__ import annotations

import os

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6390/0")
#: Results stay on the bench Redis when the broker is RabbitMQ (``--broker amqp``).
BACKEND_URL = os.environ.get("BENCH_BACKEND_URL", BROKER_URL)
QUEUE = os.environ.get("BENCH_QUEUE", "bench")
RESULTS = os.environ.get("BENCH_RESULTS", "0") == "1"
