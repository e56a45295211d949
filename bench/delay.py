"""W7's local server: answers each line after a 10 ms wait, and the task bodies'
client for it.

``python -m bench.delay PORT`` serves on 127.0.0.1:PORT (asyncio, one process):
every line a client sends is answered with the same line ``DELAY`` seconds later,
so a task that sends one line makes one blocking call that waits 10 ms on a local
server, whatever runs it. ``call()`` is that call written plainly (``socket``: a
green pool's patched socket yields while it waits), ``acall()`` the same with
``await`` (taskq's asyncio pool). Both keep the sockets they opened in a list and
reuse them, so each task costs one round trip, not a connection; the list needs no
lock because greenlets and coroutines switch only inside the wait.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any

DELAY = 0.01
#: A line starting with ``h`` is answered after HOLD seconds instead: W7 holds 1,000
#: tasks in flight this long to measure their memory.
HOLD = 2.0
ADDRESS = os.environ.get("BENCH_DELAY_ADDR", "127.0.0.1:6392")

_idle: list[socket.socket] = []
_aidle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []


def _host_port() -> tuple[str, int]:
    host, _, port = ADDRESS.rpartition(":")
    return host, int(port)


def call(line: bytes = b"x\n") -> None:
    """Send one line and wait for its answer (10 ms later), blocking."""
    sock = _idle.pop() if _idle else socket.create_connection(_host_port())
    sock.sendall(line)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            raise ConnectionError("the delay server closed the connection")
        reply += chunk
    _idle.append(sock)


async def acall(line: bytes = b"x\n") -> None:
    """``call()`` with ``await``."""
    if _aidle:
        reader, writer = _aidle.pop()
    else:
        reader, writer = await asyncio.open_connection(*_host_port())
    writer.write(line)
    await reader.readline()
    _aidle.append((reader, writer))


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    async def reply(line: bytes) -> None:
        await asyncio.sleep(HOLD if line.startswith(b"h") else DELAY)
        writer.write(line)

    pending: set[Any] = set()
    try:
        while line := await reader.readline():
            job = asyncio.ensure_future(reply(line))
            pending.add(job)
            job.add_done_callback(pending.discard)
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _serve(port: int) -> None:
    server = await asyncio.start_server(_answer, "127.0.0.1", port, backlog=4096)
    print(f"delay server on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
