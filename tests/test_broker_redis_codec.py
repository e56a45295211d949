"""RedisBroker pieces that need no Redis server: wire codec, keys, options, errors."""

from __future__ import annotations

import base64
import json
import time

import pytest

from taskq.broker.base import Envelope
from taskq.broker.envelope import MALFORMED_CONTENT_TYPE, decode_payload, encode_payload, list_key
from taskq.broker.redis import RedisBroker
from taskq.errors import BrokerError, ConfigurationError


def test_encode_is_kombus_virtual_envelope() -> None:
    envelope = Envelope(
        body=b"[[1, 2], {}, {}]",
        content_type="application/json",
        headers={"task": "t.add", "id": "abc"},
        properties={"correlation_id": "abc", "reply_to": "r", "delivery_tag": "stale"},
    )
    wire = json.loads(encode_payload(envelope, "celery", 5))
    assert base64.b64decode(wire["body"]) == envelope.body
    assert wire["content-type"] == "application/json"
    assert wire["content-encoding"] == "utf-8"
    assert wire["headers"] == {"task": "t.add", "id": "abc"}
    props = wire["properties"]
    assert props["correlation_id"] == "abc" and props["reply_to"] == "r"
    assert props["delivery_mode"] == 2 and props["priority"] == 5
    assert props["body_encoding"] == "base64"
    assert props["delivery_info"] == {"exchange": "", "routing_key": "celery"}
    assert props["delivery_tag"] != "stale" and len(props["delivery_tag"]) == 36


def test_decode_round_trip_drops_transport_properties() -> None:
    envelope = Envelope(
        b"\x00\xffbinary", "application/x-msgpack", "binary", {"a": [1]}, {"reply_to": "r"}
    )
    decoded = decode_payload(encode_payload(envelope, "q", 0))
    assert decoded == Envelope(
        b"\x00\xffbinary",
        "application/x-msgpack",
        "binary",
        {"a": [1]},
        {"reply_to": "r", "delivery_mode": 2, "priority": 0},
    )


def test_decode_accepts_utf8_bodies_like_kombu() -> None:
    raw = json.dumps({"body": "héllo", "content-type": "text/plain", "properties": {}}).encode()
    envelope = decode_payload(raw)
    assert envelope.body == "héllo".encode()
    assert envelope.headers == {} and envelope.content_encoding == "utf-8"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a kombu envelope"),
        (b'{"properties": {}, "body": "x"}', "content-type"),
        (b'{"properties": {}, "content-type": "a/b", "headers": [1]}', "headers"),
        (
            b'{"properties": {"body_encoding": "base64"}, "content-type": "a/b", "body": "abc"}',
            "base64",
        ),
        (
            b'{"properties": {"body_encoding": "rot13"}, "content-type": "a/b", "body": "abc"}',
            "rot13",
        ),
        (b'{"properties": {}, "content-type": "a/b", "body": 5}', "not a string"),
    ],
)
def test_decode_malformed(raw: bytes, error: str) -> None:
    envelope = decode_payload(raw)
    assert envelope.content_type == MALFORMED_CONTENT_TYPE
    assert envelope.body == raw
    assert error in envelope.headers["x-taskq-error"]


def test_encode_rejects_unserializable_headers() -> None:
    with pytest.raises(BrokerError, match="JSON-serializable"):
        encode_payload(Envelope(b"", "a/b", headers={"x": object()}), "q", 0)


@pytest.mark.parametrize(
    ("priority", "key"),
    [
        (None, "q"),
        (0, "q"),
        (2, "q"),
        (3, "q\x06\x163"),
        (5, "q\x06\x163"),
        (6, "q\x06\x166"),
        (9, "q\x06\x169"),
        (12, "q\x06\x169"),
        (-1, "q"),
    ],
)
def test_list_key_matches_kombu(priority: int | None, key: str) -> None:
    assert list_key("q", priority) == key


def test_unknown_option_suggests_the_right_one() -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'lease_timeout'"):
        RedisBroker("redis://localhost/0", consumer_id="c", options={"lease_timout": 5})


@pytest.mark.parametrize(
    "options",
    [{"lease_timeout": 0}, {"lease_timeout": "soon"}, {"max_connections": 1}, {"key_prefix": 3}],
)
def test_bad_option_values(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="Redis broker option"):
        RedisBroker("redis://localhost/0", consumer_id="c", options=options)


def test_option_strings_are_coerced() -> None:
    broker = RedisBroker("redis://localhost/0", consumer_id="c", options={"lease_timeout": "30"})
    assert broker.settings.lease_timeout == 30.0


def test_bad_scheme() -> None:
    with pytest.raises(ConfigurationError, match="Unsupported Redis URL scheme 'amqp'"):
        RedisBroker("amqp://localhost//", consumer_id="c")


def test_connection_refused_fails_fast_with_masked_url() -> None:
    broker = RedisBroker("redis://:hunter2@127.0.0.1:1/0", consumer_id="c")
    started = time.monotonic()
    with pytest.raises(BrokerError) as info:
        broker.publish(Envelope(b"x", "text/plain"), "q")
    message = str(info.value)
    assert "redis://:***@127.0.0.1:1/0" in message and "hunter2" not in message
    assert "unreachable" in message and "Check that Redis is running" in message
    with pytest.raises(BrokerError, match="unreachable"):
        broker.fetch(["q"], 10, 5.0)
    assert time.monotonic() - started < 3.0
    broker.close()
