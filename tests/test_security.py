"""Issue 12, item 3: signing and encryption of messages and results (taskq.security).

The first half checks the seal itself; the second runs real workers on every
broker, with every serializer, and publishes what an attacker with write access
to the broker or the backend would.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from taskq import App
from taskq.broker import dlq
from taskq.errors import ConfigurationError, SecurityError
from taskq.message import Envelope, TaskMessage, decode, encode
from taskq.security import SEALED_CONTENT_TYPE, Keyring, Sealer, sealer_from_settings
from taskq.testing import running_worker
from tests import servers
from tests.waiting import wait_until

OLD, NEW = "old-secret-0123456789abcdef0123456789", "new-secret-0123456789abcdef0123456789"


def sealer(key_id: str = "k2", **options: Any) -> Sealer:
    return Sealer(Keyring.from_settings({"k1": OLD, "k2": NEW}, key_id), **options)


def sample() -> Envelope:
    msg = TaskMessage(id="t-1", task="proj.pay", args=("alice", 100), kwargs={"memo": "rent"})
    return encode(msg, priority=3)


# -- the seal ------------------------------------------------------------------------


@pytest.mark.parametrize("encrypt", [False, True])
def test_a_sealed_message_opens_to_what_was_sent(encrypt: bool) -> None:
    original = sample()
    sealed = sealer(encrypt=encrypt).seal(original)
    assert sealed.content_type == SEALED_CONTENT_TYPE
    opened = sealer(encrypt=encrypt).open(sealed)
    assert (opened.body, opened.content_type, opened.headers) == (
        original.body,
        original.content_type,
        original.headers,
    )
    assert decode(opened, ["json"]).args == ("alice", 100)


def test_encryption_hides_the_arguments_and_leaves_task_and_id_visible() -> None:
    sealed = sealer(encrypt=True).seal(sample())
    assert sealed.headers == {"task": "proj.pay", "id": "t-1"}
    assert b"alice" not in sealed.body and b"rent" not in sealed.body
    signed_only = sealer().seal(sample())
    assert signed_only.headers["argsrepr"] == "('alice', 100)"  # signing hides nothing


@pytest.mark.parametrize("encrypt", [False, True])
def test_any_change_to_a_sealed_message_is_refused(encrypt: bool) -> None:
    sealed = sealer(encrypt=encrypt).seal(sample())
    for at in (7, len(sealed.body) // 2, len(sealed.body) - 1):
        body = bytearray(sealed.body)
        body[at] ^= 1
        altered = Envelope(bytes(body), sealed.content_type, "binary", sealed.headers)
        with pytest.raises(SecurityError, match="altered or forged|not have"):
            sealer().open(altered)


def test_outer_headers_cannot_override_what_the_producer_signed() -> None:
    sealed = sealer().seal(sample())
    forged_headers = {
        **sealed.headers,
        "task": "proj.drain_account",
        "retries": 9,
        "x-taskq-worker-lost": 2,
    }
    opened = sealer().open(
        Envelope(sealed.body, sealed.content_type, "binary", forged_headers, sealed.properties)
    )
    assert opened.headers["task"] == "proj.pay" and opened.headers["retries"] == 0
    assert opened.headers["x-taskq-worker-lost"] == 2  # transport bookkeeping passes


def test_keys_rotate_messages_of_every_configured_key_open() -> None:
    old = sealer(key_id="k1").seal(sample())
    assert sealer(key_id="k2").open(old).headers["id"] == "t-1"
    only_new = Sealer(Keyring.from_settings({"k2": NEW}, None))
    with pytest.raises(SecurityError, match="key 'k1', which this process does not have"):
        only_new.open(old)


def test_unsigned_messages_are_refused_unless_a_roll_out_accepts_them() -> None:
    with pytest.raises(SecurityError, match="not signed.*security_accept_unsigned"):
        sealer().open(sample())
    assert sealer(accept_unsigned=True).open(sample()).body == sample().body


@pytest.mark.parametrize("encrypt", [False, True])
def test_results_are_sealed_and_forged_ones_refused(encrypt: bool) -> None:
    s = sealer(encrypt_results=encrypt)
    stored = s.seal_result(b'{"status": "SUCCESS", "result": 1}', "application/json", "utf-8")
    assert s.open_result(stored)[1:] == ("application/json", "utf-8")
    assert (b'"result": 1' in stored) is not encrypt
    with pytest.raises(SecurityError, match="not signed"):
        s.open_result(b'{"status": "SUCCESS", "result": 1}')
    with pytest.raises(SecurityError, match="altered or forged"):
        s.open_result(stored[:-1] + bytes([stored[-1] ^ 1]))


@pytest.mark.parametrize(
    ("keys", "key_id", "error"),
    [
        ({"k": "short"}, None, "is 5 bytes; at least 32"),
        ({"a": OLD, "b": NEW}, None, "set security_key_id"),
        ({"a": OLD}, "b", "security_key_id 'b' is not in security_keys"),
        ({"a": 7}, None, "must be a string or bytes"),
        ({"é": OLD}, None, "must be ASCII"),
    ],
)
def test_unusable_keys_are_configuration_errors(
    keys: dict[str, Any], key_id: str | None, error: str
) -> None:
    with pytest.raises(ConfigurationError, match=error):
        _ = App("t", broker="memory://", security_keys=keys, security_key_id=key_id).security.sealer


def test_the_secrets_are_not_in_the_settings_repr() -> None:
    app = App("t", broker="memory://", security_keys={"k1": OLD})
    assert OLD not in repr(app.conf) and OLD not in repr(app.security.sealer.keyring)  # type: ignore[union-attr]


def test_encryption_without_cryptography_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    app = App("t", broker="memory://", security_keys={"k": NEW}, security_encrypt=True)
    with pytest.raises(ConfigurationError, match=r"pip install 'taskq\[security\]'"):
        sealer_from_settings(app.conf)
    signing_only = App("t", broker="memory://", security_keys={"k": NEW})
    assert signing_only.security.sealer is not None  # the standard library signs


# -- end to end: every broker, every serializer ------------------------------------------


def make_app(broker: str, unique: str, tmp_path: Path, **settings: Any) -> App:
    settings = {
        "task_default_queue": f"q-{unique}",
        "worker_lease_timeout": 10.0,
        "accept_content": ["json", "msgpack", "pickle"],
        "security_keys": {"k1": OLD, "k2": NEW},
        "security_key_id": "k2",
        **settings,
    }
    if broker == "sqlite":
        url = f"sqlite:///{tmp_path / 'q.sqlite3'}"
        return App("sec", broker=url, backend=url, **settings)
    servers.require("redis")
    if broker == "redis":
        options = {"key_prefix": f"taskq-test-{unique}:"}
        return App("sec", broker=servers.REDIS_URL, backend=servers.REDIS_URL,
                   broker_transport_options=options, **settings)  # fmt: skip
    servers.require("amqp")
    return App("sec", broker=servers.AMQP_URL, backend=servers.REDIS_URL,
               broker_transport_options={"dead_letter_queue": f"dq-{unique}"}, **settings)  # fmt: skip


@pytest.fixture(params=["redis", "amqp", "sqlite"])
def apps(request: pytest.FixtureRequest, unique: str, tmp_path: Path) -> Iterator[tuple[App, App]]:
    """A worker app that encrypts its results, and a producer app that encrypts messages."""
    worker_app = make_app(request.param, unique, tmp_path, security_encrypt_results=True)
    producer = make_app(request.param, unique, tmp_path, security_encrypt=True)
    yield worker_app, producer
    producer.close()
    worker_app.close()


@pytest.mark.slow
def test_signed_and_encrypted_tasks_run_on_every_broker_with_every_serializer(
    apps: tuple[App, App],
) -> None:
    worker_app, encrypting = apps
    signing = make_app_like(worker_app)
    for app in (worker_app, encrypting, signing):
        app.task(name="sec.echo")(_echo)
    # Integers past 64 bits too, except with msgpack, which holds 64-bit ones only.
    calls = [("json", 2**70), ("msgpack", 2**63), ("pickle", 2**70)]
    with running_worker(worker_app, pool="threads"):
        results = [
            (app.send_task("sec.echo", [name, number], serializer=name), [name, number])
            for app in (signing, encrypting)
            for name, number in calls
        ]
        for result, sent in results:
            assert result.get(timeout=15) == sent
    signing.close()


def make_app_like(app: App) -> App:
    """A producer that signs only, for the same broker and backend as ``app``."""
    settings = {**app.conf.as_dict(), "security_encrypt_results": False}
    return App("sec", **{k: v for k, v in settings.items() if v is not None})


def _echo(*args: Any) -> list[Any]:
    return list(args)


@pytest.mark.slow
def test_forged_and_altered_messages_are_dead_lettered_with_the_reason(
    apps: tuple[App, App],
) -> None:
    worker_app, producer = apps
    worker_app.task(name="sec.echo")(_echo)
    producer.task(name="sec.echo")(_echo)
    queue = worker_app.conf.task_default_queue
    unsigned = encode(TaskMessage(id=f"forged-{uuid.uuid4().hex}", task="sec.echo", args=(1,)))
    good = producer.security.sealer.seal(
        encode(TaskMessage(id=f"altered-{uuid.uuid4().hex}", task="sec.echo"))
    )  # type: ignore[union-attr]
    body = bytearray(good.body)
    body[-3] ^= 1
    altered = Envelope(bytes(body), good.content_type, "binary", good.headers, good.properties)
    producer.broker.publish(unsigned, queue)
    producer.broker.publish(altered, queue)
    with running_worker(worker_app, pool="threads"):
        assert producer.send_task("sec.echo", [5]).get(timeout=15) == [5]  # the worker goes on
        wanted = {unsigned.headers["id"], altered.headers["id"]}
        wait_until(
            lambda: wanted <= {p.task_id for p in dlq.parked(producer.broker, 1000)},
            15,
            "both parked",
        )
    reasons = {p.task_id: p.reason for p in dlq.parked(producer.broker, 1000)}
    assert reasons[unsigned.headers["id"]].startswith("refused: message is not signed")
    assert "altered or forged" in reasons[altered.headers["id"]]
    # Neither ran: no result was stored for them.
    for task_id in wanted:
        assert producer.AsyncResult(task_id).state == "PENDING"


def test_a_forged_result_is_refused(unique: str, tmp_path: Path) -> None:
    app = make_app("redis", unique, tmp_path)
    task_id = uuid.uuid4().hex
    client = redis.Redis.from_url(servers.REDIS_URL)
    forged = {"status": "SUCCESS", "result": "transfer approved", "task_id": task_id}
    client.set(f"celery-task-meta-{task_id}", json.dumps(forged), ex=60)
    with pytest.raises(SecurityError, match="stored result is not signed"):
        app.AsyncResult(task_id).get(timeout=5)
    # A genuine signed result copied under another task's key is refused too.
    other = uuid.uuid4().hex
    app.require_backend().store(other, "SUCCESS", "for someone else")
    client.set(f"celery-task-meta-{task_id}", client.get(f"celery-task-meta-{other}") or b"", ex=60)
    with pytest.raises(SecurityError, match=f"belongs to task '{other}'"):
        app.AsyncResult(task_id).state  # noqa: B018 - reading it is the test
    client.close()
    app.close()
