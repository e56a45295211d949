"""Reading a consuming connection's frames out of one buffer.

py-amqp's plain TCP transport reads exactly the bytes it needs next: the 7-byte
frame header, the payload, the end octet, three ``recv`` calls a frame and three
frames a message, so nine system calls for each delivered task. ``buffer_reads``
gives a connected transport a ``read_frame`` that receives up to 64 KiB at a
time and cuts the frames out of that buffer: a prefetched batch arrives in a few
calls.

The replacement keeps py-amqp's contract: it honours the socket timeout the
caller set (``having_timeout``), raises ``socket.timeout`` with nothing lost when
a frame is incomplete (the bytes stay buffered for the next call), raises
``OSError`` when the server closed the connection, and ``UnexpectedFrame`` on a
bad frame end. Only ``TCPTransport`` is changed; TLS transports keep their own.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from typing import Any

from amqp.exceptions import UnexpectedFrame

__all__ = ["buffer_reads", "drain_ready"]

_HEAD = struct.Struct(">BHI")
_CHUNK = 65536
_RETRY = (errno.EAGAIN, errno.EINTR)


class _FrameReader:
    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._buf = bytearray(transport._read_buffer or b"")  # what py-amqp had read
        self._pos = 0

    def _fill(self, need: int) -> None:
        """Receive until ``need`` bytes are buffered past the read position."""
        buf = self._buf
        if self._pos and self._pos >= len(buf) // 2:
            del buf[: self._pos]
            self._pos = 0
        sock = self._transport.sock
        while len(buf) - self._pos < need:
            try:
                chunk = sock.recv(_CHUNK)
            except OSError as exc:
                if isinstance(exc, socket.timeout) or exc.errno not in _RETRY:
                    raise
                if exc.errno == errno.EAGAIN:  # non-blocking: nothing there
                    raise TimeoutError() from exc
                continue
            if not chunk:
                self._transport.connected = False
                raise OSError("Server unexpectedly closed connection")
            buf += chunk

    def ready(self) -> bool:
        """Whether a whole frame is buffered (reading it makes no system call)."""
        have = len(self._buf) - self._pos
        if have < 7:
            return False
        size: int = _HEAD.unpack_from(self._buf, self._pos)[2]
        return have >= 7 + size + 1

    def read_frame(self) -> tuple[int, int, bytes]:
        self._fill(7)
        kind, channel, size = _HEAD.unpack_from(self._buf, self._pos)
        self._fill(7 + size + 1)
        start = self._pos + 7
        end = start + size
        if self._buf[end] != 0xCE:
            raise UnexpectedFrame(f"Received frame_end {self._buf[end]:#04x} while expecting 0xce")
        payload = bytes(self._buf[start:end])
        self._pos = end + 1
        return kind, channel, payload


def buffer_reads(connection: Any) -> None:
    """Give the py-amqp ``connection``'s plain TCP transport buffered frame reads (see
    the module docstring); any other transport is left as it is."""
    transport: Any = getattr(connection, "transport", None)
    if type(transport).__name__ != "TCPTransport" or transport.sock is None:
        return
    reader = _FrameReader(transport)
    transport.read_frame = reader.read_frame
    transport.taskq_reader = reader


def drain_ready(connection: Any, more: Callable[[], bool]) -> None:
    """Handle the frames that have arrived, without waiting, while ``more()``: those
    already buffered go straight to the connection's frame handler (no timeout
    juggling a frame, as ``drain_events(timeout=0)`` does), and the socket is read
    without blocking when the buffer runs dry."""
    reader = getattr(connection.transport, "taskq_reader", None)
    while more():
        if reader is not None and reader.ready():
            connection.on_inbound_frame(reader.read_frame())
            continue
        try:
            connection.drain_events(timeout=0)
        except TimeoutError:
            return
