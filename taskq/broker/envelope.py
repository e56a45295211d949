"""kombu's virtual-transport message layout, shared by taskq's own transports.

kombu's virtual transports (Redis, SQS, the database transports) store a message
as one JSON object::

    {"body": "<base64>", "content-encoding": ..., "content-type": ...,
     "headers": {...},
     "properties": {..., "body_encoding": "base64", "priority": p,
                    "delivery_info": {"exchange": ..., "routing_key": ...},
                    "delivery_tag": "<uuid4>"}}

taskq's Redis broker keeps this layout so that Celery and kombu producers and
consumers share its queues; the SQLite broker stores the same layout in its rows.
On Redis, priority ``p`` (0-9, lower is served first, as kombu does) goes to list
``queue`` for step 0, else ``queue + "\\x06\\x16" + step`` with the largest step of
(0, 3, 6, 9) not above ``p``.

Decoding never raises: a payload that is not such an envelope comes back as an
envelope of content type ``MALFORMED_CONTENT_TYPE`` carrying the raw bytes and the
reason (header ``x-taskq-error``), so the worker dead-letters it once.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, cast

from kombu.utils import json as kombu_json

from taskq.errors import BrokerError
from taskq.message import MALFORMED_CONTENT_TYPE, Envelope, new_id
from taskq.serialization import json_dumps, json_loads

__all__ = [
    "MALFORMED_CONTENT_TYPE",
    "PRIORITY_SEP",
    "PRIORITY_STEPS",
    "clamp_priority",
    "decode_payload",
    "encode_payload",
    "list_key",
    "malformed",
    "priority_step",
    "queue_of",
]

PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"
# Set by the virtual transport on publish; not message metadata a task should see.
TRANSPORT_PROPERTIES = frozenset({"body_encoding", "delivery_tag", "delivery_info"})

# kombu's JSON (datetime, Decimal, UUID, bytes as {"__type__": ...} markers), so payloads
# read as kombu's do; serialization.json_* for everything without markers (orjson).
_kombu_loads: Callable[[bytes], Any] = kombu_json.loads


def clamp_priority(priority: object) -> int:
    """``priority`` as kombu reads it: an int clamped to 0-9, 0 when missing or not a number."""
    try:
        value = int(cast(Any, priority) or 0)
    except (TypeError, ValueError):
        return 0
    return min(max(value, 0), 9)


def priority_step(priority: object) -> int:
    """The kombu priority step (0, 3, 6 or 9) whose list holds ``priority``."""
    value = clamp_priority(priority)
    return max(step for step in PRIORITY_STEPS if step <= value)


def list_key(queue: str, priority: object = 0) -> str:
    """The Redis list holding ``queue``'s messages of ``priority``, named as kombu does."""
    step = priority_step(priority)
    return f"{queue}{PRIORITY_SEP}{step}" if step else queue


def queue_of(key: str) -> str:
    """The queue whose list ``key`` is (the inverse of ``list_key``)."""
    base, _, step = key.rpartition(PRIORITY_SEP)
    return base if base and step in ("3", "6", "9") else key


def encode_payload(
    envelope: Envelope, queue: str, priority: int, *, delivery_mode: int | None = 2
) -> bytes:
    """The kombu virtual-transport JSON for ``envelope`` published to ``queue``.

    ``delivery_mode`` is the default for a message without one (kombu's producers
    send 2, persistent); None leaves the properties as they are.

    Raises:
        BrokerError: headers or properties are not JSON-serializable.
    """
    if delivery_mode is None:
        properties = dict(envelope.properties)
    else:
        properties = {"delivery_mode": delivery_mode, **envelope.properties}
    properties.update(
        priority=priority,
        body_encoding="base64",
        delivery_info={"exchange": "", "routing_key": queue},
        delivery_tag=new_id(),
    )
    message = {
        "body": base64.b64encode(envelope.body).decode("ascii"),
        "content-encoding": envelope.content_encoding,
        "content-type": envelope.content_type,
        "headers": envelope.headers,
        "properties": properties,
    }
    try:
        return json_dumps(message)
    except (TypeError, ValueError) as exc:
        raise BrokerError(
            f"Cannot encode a message for queue {queue!r}: {exc}. "
            "Headers and properties must be JSON-serializable."
        ) from exc


def malformed(raw: bytes, error: str) -> Envelope:
    """An envelope carrying undecodable ``raw`` and what was wrong with it."""
    return Envelope(
        body=bytes(raw),
        content_type=MALFORMED_CONTENT_TYPE,
        content_encoding="binary",
        headers={"x-taskq-error": error},
    )


def decode_payload(raw: bytes) -> Envelope:
    """The envelope in kombu JSON ``raw``; a malformed envelope when it is not one."""
    try:
        # kombu's object hook costs a Python call per object; only markers need it.
        message = _kombu_loads(raw) if b'"__type__"' in raw else json_loads(raw)
    except (ValueError, TypeError, KeyError) as exc:  # also UnicodeDecodeError, bad markers
        return malformed(raw, f"payload is not JSON: {exc}")
    if not isinstance(message, dict):
        kind = type(message).__name__
        return malformed(raw, f"payload is a JSON {kind}, not a kombu envelope (an object)")
    body = message.get("body")
    if body is not None and not isinstance(body, str):
        kind = type(body).__name__
        return malformed(
            raw, f"kombu envelope has no string body: 'body' is a JSON {kind}, not a string"
        )
    properties = message.get("properties")
    if not isinstance(properties, dict):
        return malformed(raw, "payload is not a kombu envelope: no 'properties' object")
    content_type = message.get("content-type")
    headers = message.get("headers") or {}
    if not isinstance(content_type, str):
        return malformed(raw, "kombu envelope has no 'content-type'")
    if not isinstance(headers, dict):
        return malformed(raw, "kombu envelope 'headers' is not an object")
    encoding = properties.get("body_encoding")
    if not body:
        data = b""
    elif encoding == "base64":
        try:
            data = _b64decode(body)
        except (binascii.Error, ValueError) as exc:
            return malformed(raw, f"kombu envelope 'body' is not valid base64: {exc}")
    elif encoding in (None, "utf-8"):
        data = body.encode("utf-8")
    else:
        return malformed(raw, f"kombu envelope has unsupported body_encoding {encoding!r}")
    for name in TRANSPORT_PROPERTIES:  # the dict is ours: just parsed
        properties.pop(name, None)
    content_encoding = str(message.get("content-encoding") or "utf-8")
    return Envelope(data, content_type, content_encoding, headers, properties)


def _b64decode(body: str) -> bytes:
    """Base64 as producers write it: strict, except that line breaks and other
    whitespace (MIME-style base64) are ignored."""
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error:
        stripped = "".join(body.split())
        if stripped == body:
            raise
        return base64.b64decode(stripped, validate=True)
