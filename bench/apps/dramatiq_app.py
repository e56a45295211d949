"""Dramatiq: the bench actors on its Redis (or RabbitMQ) broker, the Results middleware
when asked for."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from bench import counter
from bench.apps import BACKEND_URL, BROKER_URL, QUEUE, RESULTS

if BROKER_URL.startswith("amqp"):  # bench/run --broker amqp: results stay on Redis
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker: dramatiq.Broker = RabbitmqBroker(url=BROKER_URL)
else:
    broker = RedisBroker(url=BROKER_URL)
if RESULTS:
    broker.add_middleware(Results(backend=RedisBackend(url=BACKEND_URL)))
dramatiq.set_broker(broker)
# W8 (bench/scale.py) lists the queues a worker consumes besides the actors' own: a
# Dramatiq worker consumes only the queues declared in its process.
for name in filter(None, os.environ.get("BENCH_QUEUES", "").split(",")):
    broker.declare_queue(name)
# Dramatiq refuses the store_results option unless the Results middleware is installed.
OPTIONS = {"store_results": True} if RESULTS else {}


@dramatiq.actor(queue_name=QUEUE, max_retries=0, **OPTIONS)
def noop() -> None:
    counter.done()


@dramatiq.actor(queue_name=QUEUE, max_retries=0, **OPTIONS)
def latency(sent: float) -> None:
    counter.started(sent)
    counter.done()
