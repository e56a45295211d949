"""Deliveries read straight off a consuming connection's frames.

Each delivery is three frames (``basic.deliver``, the content header, the body).
py-amqp decodes them with its generic serializer and kombu then wraps each in a
``Message``: with taskq's twenty-odd headers a message, that decoding was most of
the consumer's time. ``take_deliveries`` puts a frame handler in front of
py-amqp's on one connection: the deliveries of one channel become ``Raw``
records, decoded with precompiled structs, and go to a callback; every other
frame (replies, cancels, other channels, heartbeats) goes to py-amqp as before.

Header values are decoded as py-amqp decodes them (text as ``str``, or ``bytes``
when it is not UTF-8; RabbitMQ's integer kinds; tables and arrays); a message
carrying a kind this decoder does not know (``D`` decimals, ``T`` timestamps) has
its properties decoded by py-amqp instead.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from amqp import serialization

__all__ = ["Raw", "take_deliveries"]

_METHOD = struct.Struct(">HH")
_DELIVER = (60, 60)
_HEADER = struct.Struct(">HHQH")
_LONG = struct.Struct(">I")
_ULONGLONG = struct.Struct(">Q")
_NUMBERS = {
    ord("I"): struct.Struct(">i"),
    ord("i"): struct.Struct(">I"),
    ord("L"): struct.Struct(">q"),
    ord("l"): struct.Struct(">q"),
    ord("s"): struct.Struct(">h"),
    ord("U"): struct.Struct(">h"),
    ord("u"): struct.Struct(">H"),
    ord("b"): struct.Struct(">b"),
    ord("B"): struct.Struct(">B"),
    ord("d"): struct.Struct(">d"),
    ord("f"): struct.Struct(">f"),
}
_S, _X, _T, _F, _A, _V = (ord(c) for c in "SxtFAV")


class _Unknown(Exception):
    """A field kind this decoder leaves to py-amqp."""


class Raw:
    """One delivery: what ``KombuBroker`` reads of a kombu ``Message``."""

    __slots__ = ("body", "delivery_info", "delivery_tag", "headers", "properties")

    def __init__(
        self, tag: int, info: dict[str, Any], properties: dict[str, Any], body: bytes
    ) -> None:
        self.delivery_tag = tag
        self.delivery_info = info
        self.properties = properties
        self.headers = properties.get("application_headers") or {}
        self.body = body

    @property
    def content_type(self) -> str | None:
        return self.properties.get("content_type")

    @property
    def content_encoding(self) -> str | None:
        return self.properties.get("content_encoding")


def _text(data: bytes) -> Any:
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data


def _short(buf: bytes, offset: int) -> tuple[str, int]:
    size = buf[offset]
    end = offset + 1 + size
    return buf[offset + 1 : end].decode("utf-8", "surrogatepass"), end


def _item(buf: bytes, offset: int) -> tuple[Any, int]:
    kind = buf[offset]
    offset += 1
    if kind == _S:
        (size,) = _LONG.unpack_from(buf, offset)
        end = offset + 4 + size
        return _text(buf[offset + 4 : end]), end
    number = _NUMBERS.get(kind)
    if number is not None:
        return number.unpack_from(buf, offset)[0], offset + number.size
    if kind == _V:
        return None, offset
    if kind == _T:
        return buf[offset] != 0, offset + 1
    if kind == _F:
        return _table(buf, offset)
    if kind == _A:
        (size,) = _LONG.unpack_from(buf, offset)
        end = offset + 4 + size
        offset += 4
        items = []
        while offset < end:
            value, offset = _item(buf, offset)
            items.append(value)
        return items, end
    if kind == _X:
        (size,) = _LONG.unpack_from(buf, offset)
        end = offset + 4 + size
        return buf[offset + 4 : end], end
    raise _Unknown(chr(kind))


#: Decoded header names: the same twenty-odd on every task message.
_KEYS: dict[bytes, str] = {}


def _table(buf: bytes, offset: int) -> tuple[dict[str, Any], int]:
    (size,) = _LONG.unpack_from(buf, offset)
    end = offset + 4 + size
    offset += 4
    table: dict[str, Any] = {}
    keys = _KEYS
    while offset < end:
        stop = offset + 1 + buf[offset]
        raw = buf[offset + 1 : stop]
        key = keys.get(raw)
        if key is None:
            key = raw.decode("utf-8", "surrogatepass")
            if len(keys) < 4096:  # bounded: names are few, but come from producers
                keys[raw] = key
        table[key], offset = _item(buf, stop)
    return table, end


def _properties(buf: bytes, offset: int, flags: int) -> dict[str, Any]:
    """The basic properties present in ``flags`` (AMQP 0-9-1 order)."""
    out: dict[str, Any] = {}
    if flags & 0x8000:
        out["content_type"], offset = _short(buf, offset)
    if flags & 0x4000:
        out["content_encoding"], offset = _short(buf, offset)
    if flags & 0x2000:
        out["application_headers"], offset = _table(buf, offset)
    if flags & 0x1000:
        out["delivery_mode"] = buf[offset]
        offset += 1
    if flags & 0x0800:
        out["priority"] = buf[offset]
        offset += 1
    for flag, name in ((0x0400, "correlation_id"), (0x0200, "reply_to"), (0x0100, "expiration")):
        if flags & flag:
            out[name], offset = _short(buf, offset)
    if flags & 0x0080:
        out["message_id"], offset = _short(buf, offset)
    if flags & 0x0040:
        out["timestamp"] = _ULONGLONG.unpack_from(buf, offset)[0]
        offset += 8
    for flag, name in ((0x0020, "type"), (0x0010, "user_id"), (0x0008, "app_id")):
        if flags & flag:
            out[name], offset = _short(buf, offset)
    return out


def _decode_header(buf: bytes) -> tuple[int, dict[str, Any]]:
    """The body size and the properties of a content header frame's payload."""
    _, _, size, flags = _HEADER.unpack_from(buf, 0)
    try:
        return size, _properties(buf, _HEADER.size, flags)
    except _Unknown:
        properties, _ = serialization.decode_properties_basic(buf, 12)
        return size, properties


def take_deliveries(connection: Any, channel: int, deliver: Callable[[Raw], None]) -> None:
    """Hand the deliveries on ``channel`` of the py-amqp ``connection`` to
    ``deliver`` as ``Raw`` records (see the module docstring)."""
    fallback = connection.on_inbound_frame
    pending: list[Any] = []  # [tag, info, body size, properties, body parts]

    def on_frame(frame: tuple[int, int, bytes]) -> bool:
        kind, number, buf = frame
        if number != channel:
            return bool(fallback(frame))
        if kind == 1:
            if _METHOD.unpack_from(buf, 0) != _DELIVER:
                return bool(fallback(frame))
            connection.bytes_recv += 1
            tag_text, offset = _short(buf, 4)
            (tag,) = _ULONGLONG.unpack_from(buf, offset)
            redelivered = bool(buf[offset + 8] & 1)
            exchange, offset = _short(buf, offset + 9)
            routing_key, _ = _short(buf, offset)
            info = {
                "consumer_tag": tag_text,
                "delivery_tag": tag,
                "redelivered": redelivered,
                "exchange": exchange,
                "routing_key": routing_key,
            }
            pending[:] = [tag, info, 0, None, []]
            return False
        if kind == 2 and pending:
            connection.bytes_recv += 1
            size, properties = _decode_header(buf)
            pending[2], pending[3] = size, properties
            if size == 0:
                return _done(b"")
            return False
        if kind == 3 and pending:
            connection.bytes_recv += 1
            parts = pending[4]
            parts.append(buf)
            received = sum(len(p) for p in parts) if len(parts) > 1 else len(buf)
            if received < pending[2]:
                return False
            return _done(buf if len(parts) == 1 else b"".join(parts))
        return bool(fallback(frame))

    def _done(body: bytes) -> bool:
        tag, info, _, properties, _ = pending
        pending.clear()
        deliver(Raw(tag, info, properties, body))
        return True

    connection.on_inbound_frame = on_frame
