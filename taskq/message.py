"""The wire format: Celery message protocol version 2.

One module owns encoding and decoding, and one declaration owns the fields:
``TaskMessage``. Each of its fields says where it travels (a header, the body,
the body's embed, a property), under which name, how a received value is checked
and whether a running task's request context has it (``wire``); ``encode``,
``decode`` and ``CONTEXT_NAMES`` are derived from that. A task message is an
envelope whose headers describe the task and whose body is ``[args, kwargs, embed]``::

    headers: lang, task, id, shadow, eta, expires, group, group_index, retries,
             timelimit, root_id, parent_id, argsrepr, kwargsrepr, origin,
             ignore_result
    properties: correlation_id (= id), reply_to, priority, delivery_mode
    body: [args, kwargs, {"callbacks", "errbacks", "chain", "chord"}]

Nothing a producer sent is trusted (any client that can write to the broker can
send anything, issue 12): every field is checked before anything uses it, JSON
nested deeper than ``serialization.MAX_DEPTH`` is refused, and a message that
fails raises ``DecodeError`` naming the field and the value, so the worker
dead-letters it instead of crashing on it later.

Protocol 1 messages (everything in a dict body) are read too, for old clients.
See docs/protocol.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import socket
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from kombu.utils import json as kombu_json

from taskq import serialization
from taskq.errors import DecodeError

PROTOCOL_VERSION = 2
MALFORMED_CONTENT_TYPE = "application/x-taskq-malformed"
_JSON = "application/json"

#: Header counting how often the process running this message died (the poison
#: guard); the worker adds it when it redelivers the message.
LOST_HEADER = "x-taskq-worker-lost"

#: Retries, delivery counts and group indexes above this are refused: no real
#: message gets near it, and every count fits a 32-bit integer in other languages.
MAX_COUNT = 2**31 - 1
#: Time limits above this many seconds (ten years) are refused: timers and
#: ``setitimer`` overflow on values near the float range.
MAX_SECONDS = 10 * 365 * 86400.0

# Where a field travels.
HEADER, BODY, EMBED, PROPERTY = "header", "body", "embed", "property"


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


# -- checks: (received value, where it came from) -> the field's value ----------------
# Each is called only for a value that is not None; None means "not sent".


def _bad(where: str, value: Any, expected: str) -> DecodeError:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return DecodeError(f"{where} must be {expected}, got {text} ({type(value).__name__})")


def _text(value: Any, where: str) -> str:
    if type(value) is not str:
        raise _bad(where, value, "a string")
    return value


def _name(value: Any, where: str) -> str:
    if type(value) is not str or not value:
        raise _bad(where, value, "a non-empty string")
    return value


def _count(value: Any, where: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise _bad(where, value, f"an integer from 0 to {MAX_COUNT}")
    return value


def _flag(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise _bad(where, value, "true or false")
    return value


def _time(value: Any, where: str) -> datetime:
    """ISO 8601 to an aware datetime; a naive time is read as UTC (Celery sends UTC)."""
    if type(value) is not str:
        raise _bad(where, value, "an ISO 8601 time string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(where, value, "an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _seconds(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 <= value <= MAX_SECONDS:
        raise _bad(where, value, f"null or a number of seconds from 0 to {MAX_SECONDS:g}")
    return value  # type: ignore[no-any-return]


def _time_limits(value: Any, where: str) -> tuple[float | None, float | None]:
    """Celery's ``[hard, soft]``; an empty list means none."""
    if type(value) not in (list, tuple) or len(value) not in (0, 2):
        raise _bad(where, value, "[hard, soft] (each null or seconds)")
    if not value:
        return None, None
    return _seconds(value[0], where + "[0]"), _seconds(value[1], where + "[1]")


def _args(value: Any, where: str) -> tuple[Any, ...]:
    if type(value) not in (list, tuple):
        raise _bad(where, value, "a list")
    return tuple(value)


def _kwargs(value: Any, where: str) -> dict[str, Any]:
    if type(value) is not dict and not isinstance(value, Mapping):
        raise _bad(where, value, "a mapping (a JSON object)")
    for key in value:
        if type(key) is not str:
            raise _bad(where + " key", key, "a string (keyword arguments are named)")
    return value if type(value) is dict else dict(value)


def _signature(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or type(value.get("task")) is not str:
        raise _bad(where, value, 'a signature (an object with a string "task")')
    return value if type(value) is dict else dict(value)


def _signatures(value: Any, where: str) -> list[dict[str, Any]]:
    if type(value) not in (list, tuple):
        raise _bad(where, value, "null or a list of signatures")
    return [_signature(item, f"{where}[{i}]") for i, item in enumerate(value)]


# -- the declaration -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Wire:
    """Where a ``TaskMessage`` field travels and how a received value is checked.

    Attributes:
        where: ``HEADER``, ``BODY`` (``name`` is the position), ``EMBED`` or ``PROPERTY``.
        name: its name there.
        check: ``check(value, where)`` returns the field's value for a received value
            that is not None, or raises ``DecodeError``.
        context: a running task's request context (``taskq.task.Context``) has it.
        part: for the two fields of the ``timelimit`` header, which element.
    """

    where: str
    name: str | int
    check: Callable[[Any, str], Any]
    context: bool = True
    part: int | None = None


def wire(
    where: str,
    name: str | int,
    check: Callable[[Any, str], Any],
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = dataclasses.MISSING,
    context: bool = True,
    part: int | None = None,
) -> Any:
    """A ``TaskMessage`` field that travels as ``Wire(where, name, check, ...)`` says."""
    return dataclasses.field(
        default=default,
        default_factory=factory,
        metadata={"wire": Wire(where, name, check, context, part)},
    )


@dataclasses.dataclass(frozen=True)
class TaskMessage:
    """One task invocation as it travels between producer and worker.

    Each field's ``wire`` metadata is the protocol: see the module docstring.
    """

    id: str = wire(HEADER, "id", _name)
    task: str = wire(HEADER, "task", _name)
    args: tuple[Any, ...] = wire(BODY, 0, _args, ())
    kwargs: dict[str, Any] = wire(BODY, 1, _kwargs, factory=dict)
    root_id: str | None = wire(HEADER, "root_id", _text, None)
    parent_id: str | None = wire(HEADER, "parent_id", _text, None)
    group: str | None = wire(HEADER, "group", _text, None)
    group_index: int | None = wire(HEADER, "group_index", _count, None)
    eta: datetime | None = wire(HEADER, "eta", _time, None)
    expires: datetime | None = wire(HEADER, "expires", _time, None)
    retries: int = wire(HEADER, "retries", _count, 0)
    time_limit: float | None = wire(HEADER, "timelimit", _time_limits, None, part=0)
    soft_time_limit: float | None = wire(HEADER, "timelimit", _time_limits, None, part=1)
    ignore_result: bool = wire(HEADER, "ignore_result", _flag, False)
    callbacks: list[dict[str, Any]] | None = wire(EMBED, "callbacks", _signatures, None)
    errbacks: list[dict[str, Any]] | None = wire(EMBED, "errbacks", _signatures, None)
    chain: list[dict[str, Any]] | None = wire(EMBED, "chain", _signatures, None)
    chord: dict[str, Any] | None = wire(EMBED, "chord", _signature, None)
    reply_to: str | None = wire(PROPERTY, "reply_to", _text, None)
    origin: str | None = wire(HEADER, "origin", _text, None)
    shadow: str | None = wire(HEADER, "shadow", _text, None, context=False)
    #: Headers the protocol does not define, kept as they came.
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

    def context_values(self) -> dict[str, Any]:
        """The fields a running task's request context copies (``CONTEXT_NAMES``)."""
        return _context_values(self.__dict__)


_WIRES = [(f, f.metadata["wire"]) for f in dataclasses.fields(TaskMessage) if "wire" in f.metadata]
FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(TaskMessage))
#: Fields that ``taskq.task.Context`` has too, copied into it for a running task.
CONTEXT_NAMES = tuple(f.name for f, w in _WIRES if w.context)


def _default(field: dataclasses.Field[Any]) -> Any:
    return field.default if field.default is not dataclasses.MISSING else None


# -- what is derived from the declaration ----------------------------------------------
#
# The per-message code below is generated from the declaration once, at import, as
# ``dataclasses`` generates ``__init__``: straight-line code that names each field.
# A loop over the fields did the same work 3-4 us a message slower (about half the
# decode of a small message; bench/codec.py). The source is built only from the
# field and wire names declared above, never from received data.

#: Checks whose value passes unchanged when it already has this type.
_PASSES_AS: dict[Callable[[Any, str], Any], str] = {_text: "str", _flag: "bool"}
_SOURCES = {HEADER: "headers", EMBED: "embed", PROPERTY: "properties"}


def _compile_reader() -> Callable[
    [Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]], dict[str, Any]
]:
    """``read(headers, embed, properties)``: the checked value of every field that
    travels there (not the body's, not the time limits), None values as defaults."""
    namespace: dict[str, Any] = {}
    lines = ["def read(headers, embed, properties):", "    fields = {}"]
    for i, (f, w) in enumerate(_WIRES):
        if w.where == BODY or w.part is not None:
            continue
        namespace[f"check{i}"], namespace[f"default{i}"] = w.check, _default(f)
        call = f"check{i}(v, {f'{w.where} {w.name!r}'!r})"
        if w.check in _PASSES_AS:
            call = f"v if type(v) is {_PASSES_AS[w.check]} else {call}"
        lines.append(f"    v = {_SOURCES[w.where]}.get({w.name!r})")
        lines.append(f"    fields[{f.name!r}] = default{i} if v is None else {call}")
    lines.append("    return fields")
    exec("\n".join(lines), namespace)  # noqa: S102 - our own field names only, see above
    return namespace["read"]  # type: ignore[no-any-return]


def _picker(pairs: list[tuple[str, str]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``pick(values)``: the dict ``{key: values[name] for key, name in pairs}``, as one
    literal."""
    items = ", ".join(f"{key!r}: v[{name!r}]" for key, name in pairs)
    return eval(f"lambda v: {{{items}}}")  # type: ignore[no-any-return]  # noqa: S307


_REQUIRED = tuple(
    str(w.name)
    for f, w in _WIRES
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)
_read_fields = _compile_reader()
_LIMITS = tuple(
    f.name for f, w in sorted(_WIRES, key=lambda fw: fw[1].part or 0) if w.part is not None
)
#: Headers ``encode`` writes that are no field (they are for people and logs).
_INFORMATIONAL = frozenset({"lang", "argsrepr", "kwargsrepr"})
_KNOWN_HEADERS = frozenset({str(w.name) for f, w in _WIRES if w.where == HEADER} | _INFORMATIONAL)
# Headers ``encode`` copies as they are (eta, expires, root_id and origin need work).
_plain_headers = _picker(
    [
        (str(w.name), f.name)
        for f, w in _WIRES
        if w.where == HEADER
        and w.part is None
        and f.name not in ("eta", "expires", "root_id", "origin")
    ]
)
_embed = _picker([(str(w.name), f.name) for f, w in _WIRES if w.where == EMBED])
_PROPERTY_NAMES = tuple((f.name, str(w.name)) for f, w in _WIRES if w.where == PROPERTY)
_context_values = _picker([(name, name) for name in CONTEXT_NAMES])

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
    """Build the protocol 2 envelope for ``message``.

    Raises:
        EncodeError: the serializer cannot encode the arguments.
    """
    values = message.__dict__
    embed = _embed(values)
    content_type, encoding, body = _dumps_body(
        [list(message.args), message.kwargs, embed], serializer
    )
    headers = {
        **message.extra_headers,
        "lang": "py",
        **_plain_headers(values),
        "eta": _iso(message.eta),
        "expires": _iso(message.expires),
        "timelimit": [values[name] for name in _LIMITS],
        "root_id": message.root_id or message.id,
        "argsrepr": _safe_repr(message.args),
        "kwargsrepr": _safe_repr(message.kwargs),
        "origin": message.origin or origin(),
    }
    properties: dict[str, Any] = {"correlation_id": message.id, "delivery_mode": 2}
    for name, wire_name in _PROPERTY_NAMES:
        if values[name]:
            properties[wire_name] = values[name]
    if priority is not None:
        properties["priority"] = priority
    return Envelope(body, content_type, encoding, headers, properties)


def _dumps_body(body: list[Any], serializer: str) -> tuple[str, str, bytes]:
    """``serialization.dumps(body, serializer)``, with plain JSON encoded here.

    kombu's registry costs more than the encoding of a small body (a lookup, a
    context manager, a new encoder per call). Its "json" serializer is kombu's
    encoder with default settings, which ``_json_encoder`` is, so the bytes are the
    same (tests/test_producer.py compares them). A body that fails to encode goes
    through the registry after all, so the error is the registry's ``EncodeError``.
    """
    if serializer == "json":
        try:
            return _JSON, "utf-8", _json_encoder.encode(body).encode("utf-8")
        except Exception:  # the registry below raises EncodeError for it
            pass
    return serialization.dumps(body, serializer)


def decode(envelope: Envelope, accept: list[str]) -> TaskMessage:
    """Read a task message, protocol 2 or 1, checking every field.

    Raises:
        ContentDisallowed: the content type is not in ``accept``.
        DecodeError: anything else about the message is wrong; the text says which
            field, what it held and what it must be.
    """
    if envelope.content_type == MALFORMED_CONTENT_TYPE:
        raise DecodeError(str(envelope.headers.get("x-taskq-error", "malformed message")))
    headers = envelope.headers
    if not isinstance(headers, Mapping):
        raise _bad("the headers", headers, "an object")
    body = _loads_body(envelope, accept)
    if "task" not in headers and isinstance(body, Mapping) and "task" in body:
        return _decode_v1(body, envelope)
    for name in _REQUIRED:
        if not headers.get(name):
            raise DecodeError(
                f"message has no {name!r} header (protocol 2 needs 'task' and 'id'); "
                f"headers: {sorted(map(str, headers))[:20]}"
            )
    try:
        return _read(headers, body, envelope.properties)
    except DecodeError as exc:
        raise DecodeError(f"task {str(headers.get('id'))[:64]}: {exc}") from None


def _read(headers: Mapping[str, Any], body: Any, properties: Mapping[str, Any]) -> TaskMessage:
    """The message in protocol 2 ``headers``, ``body`` and ``properties``."""
    if type(body) not in (list, tuple) or len(body) not in (2, 3):
        raise _bad("the body", body, "[args, kwargs, embed]")
    embed = body[2] if len(body) == 3 else None
    if embed is None:
        embed = _NO_EMBED
    elif type(embed) is not dict and not isinstance(embed, Mapping):
        raise _bad("the body's embed (its third element)", embed, "an object")
    fields = _read_fields(headers, embed, properties)
    fields["args"] = _args(body[0], "args")
    fields["kwargs"] = _kwargs(body[1], "kwargs")
    limits = headers.get("timelimit")
    if limits is None:
        fields["time_limit"] = fields["soft_time_limit"] = None
    else:
        fields.update(zip(_LIMITS, _time_limits(limits, "header 'timelimit'"), strict=True))
    extra = {k: v for k, v in headers.items() if k not in _KNOWN_HEADERS}
    for key, value in extra.items():
        if type(key) is not str:
            raise _bad("a header name", key, "a string")
        if isinstance(value, (list, dict)):  # nested data a transport did not limit (AMQP)
            serialization.check_depth(value, f"header {key!r}")
    fields["extra_headers"] = extra
    return TaskMessage.from_fields(fields)


_NO_EMBED: Mapping[str, Any] = {}


def _loads_body(envelope: Envelope, accept: list[str]) -> Any:
    """The decoded body, as ``serialization.loads`` decodes it.

    Plain JSON (Celery's default) skips kombu's registry and its per-object hook:
    they only matter for kombu's ``{"__type__": ...}`` markers, which such a body
    lacks. Everything else goes through ``serialization.loads``.
    """
    body = envelope.body
    if not isinstance(body, bytes):
        raise _bad("the body", body, "bytes")
    if (
        envelope.content_type == _JSON
        and envelope.content_encoding == "utf-8"
        and _JSON in _accepted(tuple(accept))
        and b'"__type__"' not in body
    ):
        try:
            return serialization.json_loads(body)
        except ValueError as exc:  # also UnicodeDecodeError and too deep
            raise DecodeError(f"Could not decode {_JSON} payload: {exc}") from exc
    return serialization.loads(body, envelope.content_type, envelope.content_encoding, accept)


@functools.lru_cache(maxsize=32)
def _accepted(accept: tuple[str, ...]) -> frozenset[str]:
    return frozenset(serialization.accept_types(accept))


def _decode_v1(body: Mapping[str, Any], envelope: Envelope) -> TaskMessage:
    """Protocol 1: the fields are keys of a dict body (``taskset`` is the group)."""
    if type(body.get("id")) is not str or type(body.get("task")) is not str:
        raise DecodeError("protocol 1 message needs string 'task' and 'id' fields")
    headers = {**body, "group": body.get("taskset")}
    embed = {k: body.get(k) for k in ("callbacks", "errbacks", "chord")}
    args, kwargs = body.get("args"), body.get("kwargs")
    try:
        message = _read(
            {k: v for k, v in headers.items() if k in _KNOWN_HEADERS},
            [[] if args is None else args, {} if kwargs is None else kwargs, embed],
            envelope.properties,
        )
    except DecodeError as exc:
        raise DecodeError(f"task {body['id'][:64]}: {exc}") from None
    return message


def worker_lost_count(headers: Mapping[str, Any]) -> int:
    """How often the process running this message died (``LOST_HEADER``; 0 when absent).

    Raises:
        DecodeError: the header holds something other than a count.
    """
    value = headers.get(LOST_HEADER)
    return 0 if value is None else _count(value, f"header {LOST_HEADER!r}")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _safe_repr(value: Any, limit: int = 1024) -> str:
    try:
        text = repr(value)
    except Exception:  # a user's __repr__ may raise; the message must still go out
        text = f"<unrepresentable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
