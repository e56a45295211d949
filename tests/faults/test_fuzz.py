"""Issue 12: thousands of mutated messages, published raw, against a running worker.

A seeded generator (``tests/faults/fuzz.py``; ``TASKQ_FUZZ_SEED`` and
``TASKQ_FUZZ_MESSAGES`` change the seed and the count) writes hostile headers,
bodies, content types and, on Redis, broken kombu envelopes, with a good task
after every tenth. The worker must stay alive, dead-letter each bad message
exactly once (matched byte for byte on Redis, by a per-message header on
RabbitMQ) and run every good one.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import time
import uuid
from collections.abc import Callable

import kombu
import pytest

from taskq.broker.amqp.broker import KombuBroker
from tests import proc, servers
from tests.faults.cluster import (
    AMQP_URL,
    amqp_waiting,
    delete_amqp,
    start_worker,
    stop_all,
    wait_settled,
)
from tests.faults.faultproj import Config
from tests.faults.fuzz import DEAD, RUN, Case, Fuzzer
from tests.faults.ledger import Checker, Event, Ledger
from tests.faults.redis_server import PrivateRedis

SEED = int(os.environ.get("TASKQ_FUZZ_SEED", "12"))
MESSAGES = int(os.environ.get("TASKQ_FUZZ_MESSAGES", "2000"))
GOOD_EVERY = 10

MakeConfig = Callable[..., Config]


def redis_payload(case: Case, queue: str) -> bytes:
    """The kombu envelope a client writes with LPUSH (the standard library's JSON, so
    NaN and infinities travel as the literals Python's parser reads back)."""
    if case.raw is not None:
        return case.raw
    envelope = {
        "body": base64.b64encode(case.body).decode("ascii"),
        "content-encoding": case.content_encoding,
        "content-type": case.content_type,
        "headers": case.headers,
        "properties": {
            **case.properties,
            "body_encoding": "base64",
            "priority": 0,
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "", "routing_key": queue},
        },
    }
    return json.dumps(envelope).encode("utf-8")


def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout}s (seed {SEED})"
        time.sleep(0.2)


def run_while_alive(ledger: Ledger, worker: proc.Proc, cases: list[Case], timeout: float) -> None:
    """Wait until every good task ran, failing at once if the worker died meanwhile."""
    wanted = {c.id for c in cases if c.expect == RUN}

    def done(events: list[Event]) -> bool:
        if worker.popen.poll() is not None:
            tail = "\n".join(worker.output.splitlines()[-30:])
            raise AssertionError(f"the worker died (seed {SEED}):\n{tail}")
        return wanted <= {e.id for e in events if e.event == "done"}

    ledger.wait(done, timeout, f"the good tasks (seed {SEED})")


def report(ledger: Ledger, scenario: str, cases: list[Case], parked: int) -> None:
    ran = [c.id for c in cases if c.expect == RUN]
    result = Checker(ledger, scenario).report(
        ran, seed=SEED, messages=len(cases), bad=len(cases) - len(ran), dead_lettered=parked
    )
    assert not result.lost and not result.unexpected and not result.duplicated, SEED


@pytest.mark.timeout(180)
def test_fuzzed_messages_on_redis(
    make_config: MakeConfig, broker_redis: PrivateRedis, ledger: Ledger, unique: str
) -> None:
    config = make_config(broker_redis.url, lease=5.0)
    cases = list(Fuzzer(SEED, f"fz-{unique}", redis=True).cases(MESSAGES, GOOD_EVERY))
    payloads = [redis_payload(case, config.queue) for case in cases]
    client = broker_redis.client()
    pipe = client.pipeline(transaction=False)
    for payload in payloads:
        pipe.lpush(config.queue, payload)
    pipe.execute()
    dead = collections.Counter(p for c, p in zip(cases, payloads, strict=True) if c.expect == DEAD)
    worker = start_worker(config, "-P", "threads", "-c", "4")
    try:
        run_while_alive(ledger, worker, cases, 120)
        wait(lambda: client.llen(config.queue) == 0, 60, "queue drained")
        wait_settled(broker_redis, 60)
        # The dead-letter list keeps each payload byte for byte (broker/redis/dlq.py).
        entries = [json.loads(e) for e in client.lrange("taskq:dlq", 0, -1)]
        assert worker.popen.poll() is None, f"the worker died (seed {SEED}):\n{worker.output}"
    finally:
        stop_all([worker])
        client.close()
    parked = collections.Counter(
        e["payload"].encode() if "payload" in e else base64.b64decode(e["payload_base64"])
        for e in entries
    )
    assert parked == dead, _differences(parked, dead)
    assert all(e["reason"] for e in entries)
    report(ledger, "13 fuzz (redis)", cases, len(entries))


def _differences(got: collections.Counter[bytes], expected: collections.Counter[bytes]) -> str:
    extra, missing = got - expected, expected - got
    return (
        f"seed {SEED}: {sum(extra.values())} unexpected, {sum(missing.values())} missing; "
        f"e.g. {list(extra)[:2]!r} {list(missing)[:2]!r}"
    )


@pytest.mark.timeout(180)
def test_fuzzed_messages_on_rabbitmq(make_config: MakeConfig, ledger: Ledger, unique: str) -> None:
    servers.require("amqp")
    dead_queue = f"faults-dead-{unique}"
    config = make_config(AMQP_URL, transport_options={"dead_letter_queue": dead_queue})
    cases = list(Fuzzer(SEED, f"fz-{unique}", redis=False).cases(MESSAGES, GOOD_EVERY))
    dead = collections.Counter(c.id for c in cases if c.expect == DEAD)
    inspector = KombuBroker(AMQP_URL, consumer_id="fuzz", options=dict(config.transport_options))
    try:
        with kombu.Connection(AMQP_URL) as conn:
            queue = kombu.Queue(config.queue, kombu.Exchange(config.queue, "direct"), config.queue)
            producer = conn.Producer()
            for case in cases:  # raw, as any client could send them
                producer.publish(
                    case.body, exchange=queue.exchange, routing_key=config.queue,
                    headers=case.headers, content_type=case.content_type,
                    content_encoding=case.content_encoding, declare=[queue],
                    correlation_id=case.properties.get("correlation_id"),
                )  # fmt: skip
        worker = start_worker(config, "-P", "threads", "-c", "4")
        try:
            run_while_alive(ledger, worker, cases, 120)
            wait(lambda: amqp_waiting(dead_queue) >= sum(dead.values()), 90, "dead-lettered")
            wait(lambda: amqp_waiting(config.queue) == 0, 30, "queue drained")
            assert worker.popen.poll() is None, f"the worker died (seed {SEED}):\n{worker.output}"
        finally:
            stop_all([worker])
        assert amqp_waiting(config.queue) == 0
        parked = inspector.dead_letters(len(cases) + 100)
        got = collections.Counter(str(d.envelope.headers.get("x-fuzz")) for d in parked)
        assert got == dead, f"seed {SEED}: {got - dead} unexpected, {dead - got} missing"
        report(ledger, "13 fuzz (rabbitmq)", cases, len(parked))
    finally:
        inspector.close()
        delete_amqp(config.queue, dead_queue)
