"""A thin adapter over kombu's serializer registry.

JSON is the default. msgpack and pickle are used only when named; a consumer
decodes only the content types in its accept list and raises
``ContentDisallowed`` (a ``DecodeError``) for anything else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import orjson
from kombu import serialization as kombu_ser
from kombu.exceptions import ContentDisallowed as KombuContentDisallowed
from kombu.utils import json as kombu_json

from taskq.errors import ConfigurationError, ContentDisallowed, DecodeError, did_you_mean

KNOWN = ("json", "msgpack", "pickle", "yaml")


_kombu_encoder = kombu_json.JSONEncoder()


def json_loads(data: bytes) -> Any:
    """Parse plain JSON (no kombu ``__type__`` markers) as ``json.loads`` does.

    orjson parses a task message three to four times faster than the standard
    library (docs/performance.md); what it refuses (NaN, integers past 64 bits) is
    parsed by the standard library, so the result is the same.

    Raises:
        ValueError: not JSON (also invalid UTF-8).
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
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
        return kombu_ser.loads(data, content_type, content_encoding, accept=allowed)
    except KombuContentDisallowed as exc:
        raise ContentDisallowed(str(exc)) from exc
    except Exception as exc:
        raise DecodeError(f"Could not decode {content_type} payload: {exc}") from exc


def loads_any(data: bytes, serializer: str, accept: Iterable[str]) -> Any:
    """Decode data written with ``serializer`` (a name or MIME type)."""
    return loads(
        data, content_type_for(serializer), "utf-8" if serializer == "json" else "binary", accept
    )
