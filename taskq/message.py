"""The wire format: Celery message protocol version 2.

One module owns encoding and decoding. A task message is an envelope whose
headers describe the task and whose body is ``[args, kwargs, embed]``::

    headers: lang, task, id, shadow, eta, expires, group, group_index, retries,
             timelimit, root_id, parent_id, argsrepr, kwargsrepr, origin,
             ignore_result
    properties: correlation_id (= id), reply_to, priority, delivery_mode
    body: [args, kwargs, {"callbacks", "errbacks", "chain", "chord"}]

Protocol 1 messages (everything in a dict body) are read too, for old clients.
See docs/protocol.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import socket
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from kombu.utils import json as kombu_json

from taskq import serialization
from taskq.errors import DecodeError

PROTOCOL_VERSION = 2
MALFORMED_CONTENT_TYPE = "application/x-taskq-malformed"
_JSON = "application/json"

_KNOWN_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index",
        "retries", "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr",
        "origin", "ignore_result",
    }
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Envelope:
    """One message as it travels: the encoded body plus AMQP-style metadata.

    ``properties`` holds AMQP basic properties: ``correlation_id``, ``reply_to``,
    ``priority``, ``delivery_mode``.
    """

    body: bytes
    content_type: str
    content_encoding: str = "utf-8"
    headers: dict[str, Any] = dataclasses.field(default_factory=dict)
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TaskMessage:
    """One task invocation as it travels between producer and worker."""

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    eta: datetime | None = None
    expires: datetime | None = None
    retries: int = 0
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool = False
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    reply_to: str | None = None
    origin: str | None = None
    shadow: str | None = None
    extra_headers: dict[str, Any] = dataclasses.field(default_factory=dict)

    def replace(self, **changes: Any) -> TaskMessage:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> TaskMessage:
        """The message whose fields are ``fields``, which must name every field.

        For the paths that make one a message (sending, decoding): the generated
        ``__init__`` of a frozen dataclass sets each of the 22 fields through
        ``object.__setattr__`` (about 5 us, the largest single cost of ``delay()``);
        this fills the instance dict in one step. The result is the same frozen,
        comparable message.
        """
        msg = object.__new__(cls)
        msg.__dict__.update(fields)
        return msg


FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(TaskMessage))

# kombu's JSON encoder (datetime, Decimal, UUID and bytes as {"__type__": ...} markers),
# configured as kombu.utils.json.dumps configures it, so the bytes are those of kombu's
# registered "json" serializer. One shared instance: json.dumps(cls=...) builds one a call.
_json_encoder: json.JSONEncoder = kombu_json.JSONEncoder()


def new_id() -> str:
    """A random UUID string (version 4), as ``str(uuid.uuid4())`` makes, at half the cost:
    every message sent needs one."""
    digits = os.urandom(16).hex()
    # uuid4's fixed bits: version nibble 4, and 0b10 as the variant's top bits (RFC 4122).
    variant = _VARIANT_DIGITS[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


_VARIANT_DIGITS = "89ab"


def origin() -> str:
    """Celery's ``origin`` header: ``gen<pid>@<hostname>``."""
    return _origin_of(os.getpid())


@functools.lru_cache(maxsize=1)
def _origin_of(pid: int) -> str:
    # Keyed on the pid so a forked child names itself; gethostname is a system call.
    return f"gen{pid}@{socket.gethostname()}"


def encode(message: TaskMessage, serializer: str = "json", priority: int | None = None) -> Envelope:
    """Build the protocol 2 envelope for ``message``."""
    embed = {
        "callbacks": message.callbacks,
        "errbacks": message.errbacks,
        "chain": message.chain,
        "chord": message.chord,
    }
    content_type, encoding, body = _dumps_body(
        [list(message.args), message.kwargs, embed], serializer
    )
    headers = {
        **message.extra_headers,
        "lang": "py",
        "task": message.task,
        "id": message.id,
        "shadow": message.shadow,
        "eta": _iso(message.eta),
        "expires": _iso(message.expires),
        "group": message.group,
        "group_index": message.group_index,
        "retries": message.retries,
        "timelimit": [message.time_limit, message.soft_time_limit],
        "root_id": message.root_id or message.id,
        "parent_id": message.parent_id,
        "argsrepr": _safe_repr(message.args),
        "kwargsrepr": _safe_repr(message.kwargs),
        "origin": message.origin or origin(),
        "ignore_result": message.ignore_result,
    }
    properties: dict[str, Any] = {"correlation_id": message.id, "delivery_mode": 2}
    if message.reply_to:
        properties["reply_to"] = message.reply_to
    if priority is not None:
        properties["priority"] = priority
    return Envelope(body, content_type, encoding, headers, properties)


def _dumps_body(body: list[Any], serializer: str) -> tuple[str, str, bytes]:
    """``serialization.dumps(body, serializer)``, with plain JSON encoded here.

    kombu's registry costs more than the encoding of a small body (a lookup, a
    context manager, a new encoder per call). Its "json" serializer is kombu's
    encoder with default settings, which ``_json_encoder`` is, so the bytes are the
    same (tests/test_producer.py compares them). A body that fails to encode goes
    through the registry after all, so the error is kombu's ``EncodeError`` as before.
    """
    if serializer == "json":
        try:
            return _JSON, "utf-8", _json_encoder.encode(body).encode("utf-8")
        except Exception:  # the registry below raises kombu's EncodeError for it
            pass
    return serialization.dumps(body, serializer)


def decode(envelope: Envelope, accept: list[str]) -> TaskMessage:
    """Read a task message, protocol 2 or 1.

    Raises:
        ContentDisallowed: the content type is not in ``accept``.
        DecodeError: anything else about the message is wrong; the text says what.
    """
    if envelope.content_type == MALFORMED_CONTENT_TYPE:
        raise DecodeError(str(envelope.headers.get("x-taskq-error", "malformed message")))
    body = _loads_body(envelope, accept)
    headers = envelope.headers or {}
    if "task" not in headers and isinstance(body, Mapping) and "task" in body:
        return _decode_v1(body, envelope)
    for name in ("task", "id"):
        if not isinstance(headers.get(name), str) or not headers[name]:
            raise DecodeError(f"message has no {name!r} header (protocol 2 needs 'task' and 'id')")
    if not isinstance(body, (list, tuple)) or len(body) not in (2, 3):
        raise DecodeError(
            f"task {headers['id']}: body must be [args, kwargs, embed], got {type(body).__name__}"
        )
    args, kwargs = body[0], body[1]
    embed = body[2] if len(body) == 3 and isinstance(body[2], Mapping) else {}
    _check_args(headers["id"], args, kwargs)
    timelimit = headers.get("timelimit") or (None, None)
    get = headers.get
    return TaskMessage.from_fields(
        {
            "id": headers["id"],
            "task": headers["task"],
            "args": tuple(args),
            "kwargs": dict(kwargs),
            "root_id": get("root_id"),
            "parent_id": get("parent_id"),
            "group": get("group"),
            "group_index": get("group_index"),
            "eta": _parse_time(get("eta"), "eta"),
            "expires": _parse_time(get("expires"), "expires"),
            "retries": int(get("retries") or 0),
            "time_limit": timelimit[0],
            "soft_time_limit": timelimit[1] if len(timelimit) > 1 else None,
            "ignore_result": bool(get("ignore_result", False)),
            "callbacks": embed.get("callbacks"),
            "errbacks": embed.get("errbacks"),
            "chain": embed.get("chain"),
            "chord": embed.get("chord"),
            "reply_to": envelope.properties.get("reply_to"),
            "origin": get("origin"),
            "shadow": get("shadow"),
            "extra_headers": {k: v for k, v in headers.items() if k not in _KNOWN_HEADERS},
        }
    )


def _loads_body(envelope: Envelope, accept: list[str]) -> Any:
    """The decoded body, as ``serialization.loads`` decodes it.

    Plain JSON (Celery's default) skips kombu's registry and its per-object hook:
    they only matter for kombu's ``{"__type__": ...}`` markers, which such a body
    lacks. Everything else goes through ``serialization.loads``.
    """
    body = envelope.body
    if (
        envelope.content_type == _JSON
        and envelope.content_encoding == "utf-8"
        and _JSON in _accepted(tuple(accept))
        and b'"__type__"' not in body
    ):
        try:
            return serialization.json_loads(body)
        except ValueError as exc:  # also UnicodeDecodeError
            raise DecodeError(f"Could not decode {_JSON} payload: {exc}") from exc
    return serialization.loads(body, envelope.content_type, envelope.content_encoding, accept)


@functools.lru_cache(maxsize=32)
def _accepted(accept: tuple[str, ...]) -> frozenset[str]:
    return frozenset(serialization.accept_types(accept))


def _decode_v1(body: Mapping[str, Any], envelope: Envelope) -> TaskMessage:
    task_id = body.get("id")
    if not isinstance(task_id, str) or not isinstance(body.get("task"), str):
        raise DecodeError("protocol 1 message needs string 'task' and 'id' fields")
    args, kwargs = body.get("args") or [], body.get("kwargs") or {}
    _check_args(task_id, args, kwargs)
    timelimit = body.get("timelimit") or (None, None)
    return TaskMessage(
        id=task_id,
        task=body["task"],
        args=tuple(args),
        kwargs=dict(kwargs),
        group=body.get("taskset"),
        eta=_parse_time(body.get("eta"), "eta"),
        expires=_parse_time(body.get("expires"), "expires"),
        retries=int(body.get("retries") or 0),
        time_limit=timelimit[0],
        soft_time_limit=timelimit[1],
        callbacks=body.get("callbacks"),
        errbacks=body.get("errbacks"),
        chord=body.get("chord"),
        reply_to=envelope.properties.get("reply_to"),
    )


def _check_args(task_id: str, args: Any, kwargs: Any) -> None:
    if not isinstance(args, (list, tuple)):
        raise DecodeError(f"task {task_id}: args must be a list, got {type(args).__name__}")
    if not isinstance(kwargs, Mapping):
        raise DecodeError(f"task {task_id}: kwargs must be a mapping, got {type(kwargs).__name__}")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: Any, name: str) -> datetime | None:
    """ISO 8601 to an aware datetime; a naive time is read as UTC (Celery sends UTC)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise DecodeError(f"header {name!r} is not an ISO 8601 time: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _safe_repr(value: Any, limit: int = 1024) -> str:
    try:
        text = repr(value)
    except Exception:  # a user's __repr__ may raise; the message must still go out
        text = f"<unrepresentable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
