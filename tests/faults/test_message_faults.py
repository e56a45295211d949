"""Scenario 8: malformed messages of each kind are dead-lettered once, with the
reason, and the queue drains (docs/reliability.md)."""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable

import kombu
import pytest

from taskq import App
from taskq.broker.amqp.broker import KombuBroker
from taskq.broker.base import Envelope
from taskq.broker.envelope import encode_payload
from taskq.broker.redis import RedisBroker
from tests import servers
from tests.faults.cluster import (
    AMQP_URL,
    delete_amqp,
    leases,
    publish,
    run_cli,
    start_worker,
    stop_all,
)
from tests.faults.faultproj import Config
from tests.faults.ledger import Checker, Ledger
from tests.faults.redis_server import PrivateRedis

MakeConfig = Callable[..., Config]


def bad_envelopes(unique: str) -> dict[str, Envelope]:
    """Envelopes a transport carries fine but no worker can run, by kind."""
    headers = {"task": "faults.work", "lang": "py"}
    return {
        "not-accepted": Envelope(
            pickle.dumps([[], {}, {}]), "application/x-python-serialize", "binary",
            {**headers, "id": f"s8-pickle-{unique}"},
        ),
        "missing-headers": Envelope(b"[[], {}, {}]", "application/json", "utf-8", {}),
        "truncated-body": Envelope(
            b'[[], {"seconds": 0', "application/json", "utf-8",
            {**headers, "id": f"s8-truncated-{unique}"},
        ),
        "bad-json-body": Envelope(
            b"{not json", "application/json", "utf-8", {**headers, "id": f"s8-json-{unique}"}
        ),
    }  # fmt: skip


def wait_drained(
    dead_letters: Callable[[], int], expected: int, queue_empty: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + 20
    while not (dead_letters() >= expected and queue_empty()):
        assert time.monotonic() < deadline, "malformed messages not drained in 20s"
        time.sleep(0.1)


@pytest.mark.timeout(60)
def test_8_malformed_messages_redis(
    make_config: MakeConfig,
    broker_redis: PrivateRedis,
    ledger: Ledger,
    producer: Callable[[Config], App],
    unique: str,
) -> None:
    config = make_config(broker_redis.url)
    raw = {
        "bad-json": b"{this is not JSON",
        "not-a-kombu-envelope": json.dumps(["just", "a", "list"]).encode(),
        **{
            kind: encode_payload(env, config.queue, 0)
            for kind, env in bad_envelopes(unique).items()
        },
    }
    client = broker_redis.client()
    for payload in raw.values():
        client.lpush(config.queue, payload)
    sentinels = publish(producer(config), [f"s8-ok-{unique}-{n}" for n in range(3)])
    broker = RedisBroker(broker_redis.url, consumer_id="inspector")
    worker = start_worker(config, "-P", "threads", "-c", "2")
    try:
        ledger.wait_done(sentinels, 20)
        wait_drained(
            lambda: len(broker.dead_letters(1000)),
            len(raw),
            lambda: client.llen(config.queue) == 0 and not leases(broker_redis),
        )
        time.sleep(0.5)  # a loop would add entries or put messages back; give it a chance
        parked = broker.dead_letters(1000)
        listed = run_cli(config, "dlq", "list")
    finally:
        stop_all([worker])
        broker.close()
        client.close()
    check(ledger, "8 malformed (redis)", sentinels, raw, parked, listed.stdout)
    assert client.llen(config.queue) == 0


def check(
    ledger: Ledger, scenario: str, sentinels: list[str], raw: dict[str, object],
    parked: list[object], listed: str,
) -> None:  # fmt: skip
    print(listed)
    reasons = sorted(str(getattr(p, "reason", "")) for p in parked)
    report = Checker(ledger, scenario).report(
        sentinels, malformed=len(raw), dead_lettered=len(parked)
    )
    assert not report.lost and not report.duplicated
    assert len(parked) == len(raw), reasons  # each once: no loop
    assert all(r.startswith("malformed: ") and len(r) > len("malformed: ") + 5 for r in reasons)
    assert f"{len(raw)} message(s)" in listed
    for reason in reasons:
        assert reason in listed


@pytest.mark.timeout(60)
def test_8_malformed_messages_rabbitmq(
    make_config: MakeConfig, ledger: Ledger, producer: Callable[[Config], App], unique: str
) -> None:
    servers.require("amqp")
    dead_queue = f"faults-dead-{unique}"
    config = make_config(AMQP_URL, transport_options={"dead_letter_queue": dead_queue})
    envelopes = bad_envelopes(unique)
    broker = KombuBroker(AMQP_URL, consumer_id="inspector", options=dict(config.transport_options))
    try:
        broker.declare([])
        with kombu.Connection(AMQP_URL) as conn:
            queue = kombu.Queue(config.queue, kombu.Exchange(config.queue, "direct"), config.queue)
            kombu_producer = conn.Producer()
            for env in envelopes.values():  # raw, as any client could send them
                kombu_producer.publish(
                    env.body, exchange=queue.exchange, routing_key=config.queue,
                    headers=env.headers, content_type=env.content_type,
                    content_encoding=env.content_encoding, declare=[queue],
                )  # fmt: skip
        sentinels = publish(producer(config), [f"s8-ok-{unique}-{n}" for n in range(3)])
        worker = start_worker(config, "-P", "threads", "-c", "2")
        try:
            ledger.wait_done(sentinels, 20)
            wait_drained(lambda: len(broker.dead_letters(1000)), len(envelopes), lambda: True)
            time.sleep(0.5)
            parked = broker.dead_letters(1000)
            listed = run_cli(config, "dlq", "list")
        finally:
            stop_all([worker])
        check(ledger, "8 malformed (rabbitmq)", sentinels, envelopes, parked, listed.stdout)
        with kombu.Connection(AMQP_URL) as conn:
            _, waiting, _ = conn.channel().queue_declare(config.queue, passive=True)
        assert waiting == 0
    finally:
        broker.close()
        delete_amqp(config.queue, dead_queue)
