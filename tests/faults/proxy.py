"""A fault-injecting TCP proxy between redis-py and a Redis server.

The proxy forwards bytes both ways and reads them as RESP, so it knows each
command a client sends and which reply answers it. A test arms a ``Fault`` on the
commands it picks (``script_call(scripts.FETCH)``: the Redis broker's fetch) and
the next such command misbehaves the way a network or a server does, on a real
connection:

- ``"lose command"``: the command never reaches Redis, and the client's
  connection drops.
- ``"lose reply"``: Redis runs the command, but its reply never reaches the
  client: the connection drops first (a reset after the server answered).
- ``"hold reply"``: Redis runs the command and its reply is held back for good;
  the connection stays open until the client gives up. Past its
  ``socket_timeout`` redis-py re-sends the command on a new connection, so the
  command runs twice.

It also records every command it forwards, so a test can check what went over
the wire. Replies on a connection in subscribe mode do not match commands one to
one; arm no fault on those.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

Action = Literal["lose command", "lose reply", "hold reply"]
Command = list[bytes]

#: Commands redis-py sends when it opens a connection, before the caller's own.
SETUP = {b"AUTH", b"CLIENT", b"HELLO", b"PING", b"SELECT"}


def script_call(source: str) -> Callable[[Command], bool]:
    """Matches the calls of the Lua script ``source`` (EVALSHA, or EVAL with it)."""
    sha = hashlib.sha1(source.encode("utf-8")).hexdigest().encode("ascii")
    body = source.encode("utf-8")

    def match(command: Command) -> bool:
        name = command[0].upper()
        return (name == b"EVALSHA" and command[1].lower() == sha) or (
            name == b"EVAL" and command[1] == body
        )

    return match


def names(commands: list[Command]) -> list[str]:
    """The command names, leaving out connection set-up (``SETUP``)."""
    return [c[0].upper().decode() for c in commands if c[0].upper() not in SETUP]


class Fault:
    """What to do to the commands ``match`` picks: ``times`` of them, after letting
    ``after`` through. ``wait`` returns once it has been applied."""

    def __init__(self, action: Action, match: Callable[[Command], bool], times: int, after: int):
        self.action = action
        self.match = match
        self.times = times
        self.applied = 0
        self._left = times  # commands still to fault
        self._skip = after  # matching commands still to let through
        self._cond = threading.Condition()

    def wait(self, times: int | None = None, timeout: float = 10.0) -> None:
        """Return once applied ``times`` times (all of them by default); fail after
        ``timeout`` seconds."""
        want = self.times if times is None else times
        with self._cond:
            if not self._cond.wait_for(lambda: self.applied >= want, timeout):
                raise AssertionError(
                    f"fault {self.action!r} applied {self.applied} of {want} times "
                    f"within {timeout}s"
                )

    def take(self, command: Command) -> bool:
        """Whether this fault takes ``command`` (the caller holds the proxy's lock)."""
        if not self._left or not self.match(command):
            return False
        if self._skip:
            self._skip -= 1
            return False
        self._left -= 1
        return True

    def done(self) -> None:
        """The fault was applied to a command."""
        with self._cond:
            self.applied += 1
            self._cond.notify_all()


class RedisProxy:
    """Listens on a free loopback port and forwards to the Redis at ``upstream``.

    ``url`` is ``upstream`` with the proxy's address (same database and options).
    Use it as a context manager, or call ``close``.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        self.url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._commands: list[Command] = []
        self._pipes: list[_Pipe] = []
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name="redis-proxy", daemon=True)
        self._acceptor.start()

    def __enter__(self) -> RedisProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fault(
        self,
        action: Action,
        match: Callable[[Command], bool],
        *,
        times: int = 1,
        after: int = 0,
    ) -> Fault:
        """Arm a fault: the next ``times`` commands ``match`` picks, after ``after``
        of them went through untouched, get ``action``."""
        fault = Fault(action, match, times, after)
        with self._lock:
            self._faults.append(fault)
        return fault

    def commands(self) -> list[Command]:
        """Every command forwarded so far (or swallowed by a fault), in order."""
        with self._lock:
            return list(self._commands)

    @contextmanager
    def recording(self) -> Iterator[list[Command]]:
        """The commands sent inside the block (filled in when it ends)."""
        sent: list[Command] = []
        start = len(self.commands())
        yield sent
        sent += self.commands()[start:]

    def close(self) -> None:
        """Stop listening and drop every connection."""
        with self._lock:
            self._closed = True
            pipes = list(self._pipes)
        _shut(self._listener)
        for pipe in pipes:
            pipe.close()
        self._acceptor.join(5)
        for pipe in pipes:
            pipe.join(5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                if self._closed:
                    _shut(client)
                    return
                try:
                    server = socket.create_connection(self._upstream, timeout=5)
                except OSError:  # the server is down: so is the proxied connection
                    _shut(client)
                    continue
                server.settimeout(None)
                pipe = _Pipe(self, client, server)
                self._pipes.append(pipe)
            pipe.start()

    def _take(self, command: Command) -> Fault | None:
        """Record ``command``; the fault it gets, if any."""
        with self._lock:
            self._commands.append(command)
            for fault in self._faults:
                if fault.take(command):
                    return fault
        return None


class _Pipe:
    """One client connection and its connection to the server: a thread each way."""

    def __init__(self, proxy: RedisProxy, client: socket.socket, server: socket.socket) -> None:
        self._proxy = proxy
        self._client = client
        self._server = server
        # The fault (or None) of each command sent on and not answered yet, in order.
        self._pending: deque[Fault | None] = deque()
        self._closed = threading.Event()
        self._threads = [
            threading.Thread(target=self._up, name="redis-proxy-up", daemon=True),
            threading.Thread(target=self._down, name="redis-proxy-down", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def close(self) -> None:
        self._closed.set()
        _shut(self._client)
        _shut(self._server)

    def _up(self) -> None:
        """Client to server, command by command."""
        buffer = b""
        try:
            while chunk := self._client.recv(65536):
                buffer += chunk
                out, pos = bytearray(), 0
                while (parsed := parse(buffer, pos)) is not None:
                    command, end = parsed
                    fault = self._proxy._take(command)
                    if fault is not None and fault.action == "lose command":
                        self._server.sendall(out)
                        fault.done()
                        return
                    # Before the command goes out, so that its reply finds the entry.
                    self._pending.append(fault)
                    out += buffer[pos:end]
                    pos = end
                self._server.sendall(out)
                buffer = buffer[pos:]
        except OSError:
            pass
        finally:
            self.close()

    def _down(self) -> None:
        """Server to client, reply by reply."""
        buffer = b""
        try:
            while chunk := self._server.recv(65536):
                buffer += chunk
                out, pos = bytearray(), 0
                while (parsed := parse(buffer, pos)) is not None:
                    _, end = parsed
                    pushed = buffer[pos : pos + 1] == b">"  # RESP3 push: answers no command
                    fault = self._pending.popleft() if self._pending and not pushed else None
                    if fault is not None:
                        self._client.sendall(out)  # the replies before it
                        fault.done()
                        if fault.action == "hold reply":
                            self._closed.wait()  # until the client (or the test) leaves
                        return
                    out += buffer[pos:end]
                    pos = end
                self._client.sendall(out)
                buffer = buffer[pos:]
        except OSError:
            pass
        finally:
            self.close()


def parse(buffer: bytes, pos: int) -> tuple[Any, int] | None:
    """The RESP2/RESP3 value at ``pos`` and where it ends; None while incomplete.

    Blob strings come back as bytes (None for a null), aggregates as lists, and
    everything on one line (status, error, number, ...) as its text.
    """
    line_end = buffer.find(b"\r\n", pos)
    if line_end < 0:
        return None
    kind, head, start = buffer[pos : pos + 1], buffer[pos + 1 : line_end], line_end + 2
    if kind in (b"$", b"=", b"!"):  # blob string, verbatim string, blob error
        size = int(head)
        if size < 0:
            return None, start
        end = start + size + 2
        return (buffer[start : end - 2], end) if len(buffer) >= end else None
    if kind in (b"*", b"~", b">", b"%", b"|"):  # array, set, push, map, attribute
        count = int(head)
        if count < 0:
            return None, start
        items: list[Any] = []
        for _ in range(count * 2 if kind in (b"%", b"|") else count):
            parsed = parse(buffer, start)
            if parsed is None:
                return None
            item, start = parsed
            items.append(item)
        return items, start
    return head, start


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):  # already closed, or never connected
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
