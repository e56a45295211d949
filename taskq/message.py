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


def origin() -> str:
    """Celery's ``origin`` header: ``gen<pid>@<hostname>``."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


def encode(message: TaskMessage, serializer: str = "json", priority: int | None = None) -> Envelope:
    """Build the protocol 2 envelope for ``message``."""
    embed = {
        "callbacks": message.callbacks,
        "errbacks": message.errbacks,
        "chain": message.chain,
        "chord": message.chord,
    }
    content_type, encoding, body = serialization.dumps(
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
    return TaskMessage(
        id=headers["id"],
        task=headers["task"],
        args=tuple(args),
        kwargs=dict(kwargs),
        root_id=headers.get("root_id"),
        parent_id=headers.get("parent_id"),
        group=headers.get("group"),
        group_index=headers.get("group_index"),
        eta=_parse_time(headers.get("eta"), "eta"),
        expires=_parse_time(headers.get("expires"), "expires"),
        retries=int(headers.get("retries") or 0),
        time_limit=timelimit[0],
        soft_time_limit=timelimit[1] if len(timelimit) > 1 else None,
        ignore_result=bool(headers.get("ignore_result", False)),
        callbacks=embed.get("callbacks"),
        errbacks=embed.get("errbacks"),
        chain=embed.get("chain"),
        chord=embed.get("chord"),
        reply_to=envelope.properties.get("reply_to"),
        origin=headers.get("origin"),
        shadow=headers.get("shadow"),
        extra_headers={k: v for k, v in headers.items() if k not in _KNOWN_HEADERS},
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
            return json.loads(body.decode("utf-8"))
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
