"""A thin adapter over kombu's serializer registry.

JSON is the default. msgpack and pickle are used only when named; a consumer
decodes only the content types in its accept list and raises
``ContentDisallowed`` (a ``DecodeError``) for anything else.

Received data is untrusted (issue 12): nesting deeper than ``MAX_DEPTH`` is
refused before a parser or anything after it can recurse into it, and integers
come back exactly, whatever their size, or the serializer refuses them
(msgpack's are 64-bit) with an ``EncodeError`` when they are sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

import orjson
from kombu import serialization as kombu_ser
from kombu.exceptions import ContentDisallowed as KombuContentDisallowed
from kombu.utils import json as kombu_json

from taskq.errors import (
    ConfigurationError,
    ContentDisallowed,
    DecodeError,
    EncodeError,
    did_you_mean,
)

KNOWN = ("json", "msgpack", "pickle", "yaml")

#: Deepest nesting of lists and objects accepted in received data. Real messages
#: (canvas workflows included) stay far below it; 1,000 levels in 2 KB took the
#: standard library's parser, and anything that walks the result, into RecursionError.
MAX_DEPTH = 100

_kombu_encoder = kombu_json.JSONEncoder()

# A JSON string (its brackets are no nesting), escapes included.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
for _open, _close in ((b"[", b"]"), (b"{", b"}")):
    _STEP[_open[0]], _STEP[_close[0]] = 1, -1
# One pass over the text answers both questions cheaply: digits become "d" (19 in a
# row may be an integer past 64 bits, which orjson returns as a float), opening
# brackets "[" and closing ones "]", everything else ".".
_SHAPE = bytes(
    ord("d") if 48 <= b <= 57
    else ord("[") if b in b"[{"
    else ord("]") if b in b"]}"
    else ord(".")
    for b in range(256)
)  # fmt: skip
_LONG_NUMBER = b"d" * 19


def check_json_depth(data: bytes, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit``, before it is parsed.

    Raises:
        ValueError: nested too deep.
    """
    _check_shape(data, data.translate(_SHAPE), limit)


def _check_shape(data: bytes, shape: bytes, limit: int) -> None:
    # One count unless the text opens more than ``limit`` lists and objects in all;
    # only then are strings removed and the depth counted.
    if shape.count(b"[") <= limit:
        return
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = max(accumulate(map(_STEP.__getitem__, brackets)), default=0)
    if depth > limit:
        raise ValueError(f"JSON nested {depth} levels deep; at most {limit} are accepted")


def check_depth(value: Any, what: str = "data", limit: int = MAX_DEPTH) -> None:
    """Refuse lists, tuples and dicts nested deeper than ``limit`` in ``value``
    (decoded data of a serializer other than JSON, AMQP headers). Walks without
    recursion.

    Raises:
        DecodeError: nested too deep.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise DecodeError(f"{what} is nested deeper than {limit} levels; refused")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (list, tuple, dict)))


def json_loads(data: bytes) -> Any:
    """Parse plain JSON (no kombu ``__type__`` markers) as ``json.loads`` does.

    orjson parses a task message three to four times faster than the standard
    library (docs/performance.md); the standard library parses what orjson refuses
    (NaN) or would get wrong (it returns integers past 64 bits as floats), so the
    result is the same, and integers are exact whatever their size.

    Raises:
        ValueError: not JSON (also invalid UTF-8), or nested deeper than ``MAX_DEPTH``.
    """
    shape = data.translate(_SHAPE)
    _check_shape(data, shape, MAX_DEPTH)
    if _LONG_NUMBER not in shape:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


_PASSTHROUGH = (
    orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def json_dumps(obj: Any) -> bytes:
    """Encode ``obj`` as compact UTF-8 JSON, as kombu's JSON encoder does (dates,
    decimals and other types as kombu writes them), except that a ``uuid.UUID`` is
    written as a plain string and NaN and infinities as ``null``. orjson does the
    work; a value of any type it does not pass through unchanged goes to kombu's
    encoder. For taskq's own envelopes; message bodies use the serializer registry.

    Raises:
        TypeError: a value neither can encode.
        ValueError: a circular reference.
    """
    try:
        return orjson.dumps(obj, option=_PASSTHROUGH)
    except TypeError:
        return str(_kombu_encoder.encode(obj)).encode("utf-8")


def content_type_for(name: str) -> str:
    """The MIME type of serializer ``name`` (accepts a MIME type as well)."""
    if "/" in name:
        return name
    try:
        return str(kombu_ser.registry.name_to_type[name])
    except KeyError:
        raise ConfigurationError(
            f"Unknown serializer {name!r}.{did_you_mean(name, KNOWN)} Known: {', '.join(KNOWN)}."
        ) from None


def accept_types(names: Iterable[str]) -> set[str]:
    """MIME types for an ``accept_content`` list of names or MIME types."""
    return {content_type_for(name) for name in names}


def dumps(obj: Any, serializer: str) -> tuple[str, str, bytes]:
    """Encode ``obj``; return ``(content_type, content_encoding, body)``."""
    try:
        content_type, encoding, body = kombu_ser.dumps(obj, serializer=serializer)
    except kombu_ser.SerializerNotInstalled as exc:
        raise ConfigurationError(
            f"Serializer {serializer!r} is not available: {exc}. "
            f"Install its extra (pip install 'taskq[{serializer}]') or choose 'json'."
        ) from exc
    except Exception as exc:  # kombu's EncodeError, wrapping the serializer's own
        cause = exc.__cause__ or exc.__context__ or exc
        hint = (
            " msgpack holds integers from -2**63 to 2**64-1 only: use the json "
            "serializer (exact at any size) or send the number as a string."
            if isinstance(cause, OverflowError)
            else " Send plain data (dict, list, str, numbers) or pick another serializer."
        )
        raise EncodeError(
            f"The {serializer} serializer cannot encode this value: {exc}.{hint}"
        ) from exc
    if isinstance(body, str):
        body = body.encode(encoding or "utf-8")
    return content_type, encoding, body


def loads(data: bytes, content_type: str, content_encoding: str, accept: Iterable[str]) -> Any:
    """Decode ``data``, refusing content types outside ``accept``.

    Raises:
        ContentDisallowed: the content type is not accepted.
        DecodeError: the data is not valid for its content type.
    """
    allowed = accept_types(accept)
    if content_type not in allowed:
        raise ContentDisallowed(
            f"Refusing to decode content of type {content_type!r}: not in accept_content "
            f"({', '.join(sorted(allowed))}). Add it to accept_content if you trust the sender."
        )
    try:
        if _is_json(content_type):
            check_json_depth(data)
        value = kombu_ser.loads(data, content_type, content_encoding, accept=allowed)
    except KombuContentDisallowed as exc:
        raise ContentDisallowed(str(exc)) from exc
    except Exception as exc:  # also RecursionError from a serializer that recursed
        raise DecodeError(f"Could not decode {content_type} payload: {exc}") from exc
    if not _is_json(content_type) and isinstance(value, (list, tuple, dict)):
        check_depth(value, f"The {content_type} payload")
    return value


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def loads_any(data: bytes, serializer: str, accept: Iterable[str]) -> Any:
    """Decode data written with ``serializer`` (a name or MIME type)."""
    return loads(
        data, content_type_for(serializer), "utf-8" if serializer == "json" else "binary", accept
    )
