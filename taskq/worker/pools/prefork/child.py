"""The body of a prefork child process, and the messages it exchanges with the parent.

Parent and child talk over a socket pair (``Wire``): length-prefixed pickles, read
in as few system calls as possible. Parent to child:

* a list of ``(seq, fields)`` pairs: run these in order (``fields`` are the
  ``Context`` field values in ``CONTEXT_FIELDS`` order: a tuple pickles in a
  fraction of the time the dataclass takes);
* ``BACK``: hand back the requests received but not started yet;
* ``Events(on)``: task events were turned on or off (a child started later is
  told at start, ``child_main``'s ``task_events``);
* ``None`` (or the parent's end closing): exit.

Child to parent:

* ``Done(seq, action, reason, runtime, rss_kib, summary)`` after each task,
  written before the next one starts, so the first request the parent has not
  heard about is the one that runs (or that was running when the child died) and
  the ones after it never started. ``rss_kib`` is 0 unless ``max_memory`` is set.
  ``summary`` (the fields of an ``executor.Summary``) tells the parent's task
  events what happened; it is None while task events are off, so nothing is
  repr'd for nobody.
* ``Back([seq, ...])``: these were never started; the parent owns them again.

A child reads everything waiting on its socket before it starts each task, so a
``BACK`` overtakes the requests queued ahead of it. It never touches the
worker's broker connection: the parent leases, acks and requeues.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import multiprocessing
import os
import pickle
import resource
import signal
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from taskq import signals
from taskq.context import Context
from taskq.errors import SoftTimeLimitExceeded
from taskq.worker.executor import Action, Executor, Outcome, Summary, internal_error

log = logging.getLogger("taskq.worker")

#: The order of the values a parent sends for each request.
CONTEXT_FIELDS = tuple(f.name for f in dataclasses.fields(Context))
#: Parent to child: give back what has not started.
BACK = "back"
PROTOCOL = pickle.HIGHEST_PROTOCOL
_HEADER = struct.Struct("!I")
_CHUNK = 1 << 16

_running = False


class Done(NamedTuple):
    """Child to parent: the task sent as ``seq`` ended with ``action`` (and
    ``reason``), after ``runtime`` seconds; ``rss_kib`` is 0 unless ``max_memory``;
    ``summary`` is for task events (None while they are off)."""

    seq: int
    action: Action
    reason: str
    runtime: float
    rss_kib: int
    # A plain tuple of ``Summary``'s fields: it pickles in a fraction of a dataclass's time.
    summary: tuple[Any, ...] | None = None


class Events(NamedTuple):
    """Parent to child: report summaries for task events from now on, or stop."""

    on: bool


class Back(NamedTuple):
    """Child to parent: these requests were never started; the parent owns them."""

    seqs: list[int]


class Wire:
    """One end of the socket pair between the parent and a child: each message is
    a pickle after its length (4 bytes, big-endian)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(self, message: Any) -> None:
        self.send_pickled(pickle.dumps(message, PROTOCOL))

    def send_pickled(self, data: bytes) -> None:
        self.sock.sendall(_HEADER.pack(len(data)) + data)

    def receive(self, block: bool) -> list[Any]:
        """The complete messages that arrived; with ``block``, wait for one at least.

        Raises:
            EOFError: the other end is closed (after the last complete messages).
        """
        wait = block
        while True:
            try:
                chunk = self.sock.recv(_CHUNK, 0 if wait else socket.MSG_DONTWAIT)
            except BlockingIOError:
                chunk = None
            else:
                if not chunk:
                    messages = self._parse()
                    if messages:
                        return messages  # the next call raises
                    raise EOFError("the other end of the socket closed")
                self._buffer += chunk
                if len(chunk) == _CHUNK:
                    wait = False  # more may wait: take it without waiting
                    continue
            messages = self._parse()
            if messages or not block:
                return messages
            wait = True

    def _parse(self) -> list[Any]:
        messages, buffer, at = [], self._buffer, 0
        while len(buffer) - at >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, at)
            end = at + _HEADER.size + size
            if len(buffer) < end:
                break
            messages.append(pickle.loads(memoryview(buffer)[at + _HEADER.size : end]))
            at = end
        if at:
            del buffer[:at]
        return messages


def child_main(
    executor: Executor,
    sock: socket.socket,
    name: str,
    inherited: Iterable[Any],
    max_memory: int | None,
    task_events: bool = False,
) -> None:
    """Run requests from ``sock`` until told to stop.

    Args:
        executor: the worker's executor, inherited by fork.
        sock: this child's end of its socket pair with the parent.
        name: the process name shown in logs.
        inherited: pipe ends and file descriptors of the parent and of other
            children that this process got by fork and must not hold open.
        max_memory: KiB of resident memory past which this child, after the task
            that crossed it, hands back what it holds and takes no more work.
        task_events: report what each task did for task events (``Done.summary``)
            until told otherwise (``Events``).
    """
    for item in inherited:
        close_quietly(item)
    multiprocessing.current_process().name = name
    # Ctrl-C and Ctrl-\\ reach the whole process group; only the parent decides what
    # they mean. SIGTERM keeps its default so `revoke(terminate=True)` ends the child.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, soft_limit_now)
    executor.reset_connections()
    signals.worker_process_init.send(None, pid=os.getpid())
    try:
        _serve(executor, Wire(sock), max_memory, task_events)
    except (EOFError, OSError):
        return  # the parent is gone


def _serve(executor: Executor, wire: Wire, max_memory: int | None, task_events: bool) -> None:
    queued: collections.deque[tuple[int, tuple[Any, ...]]] = collections.deque()
    full = False  # past max_memory: every request goes back
    while True:
        # Block only with nothing queued; otherwise just take what already waits.
        for message in wire.receive(block=not queued):
            if message is None:
                return
            if isinstance(message, Events):
                task_events = message.on
            elif message == BACK or full:
                _give_back(wire, queued, message)
            else:
                queued.extend(message)
        if not queued:
            continue
        seq, fields = queued.popleft()
        start = time.monotonic()
        outcome = run_one(executor, Context(*fields))
        runtime = time.monotonic() - start
        rss = rss_kib() if max_memory else 0
        summary = None
        if task_events and (done := outcome.summarize()) is not None:
            summary = _fields_of(done)
        wire.send(Done(seq, outcome.action, outcome.reason, runtime, rss, summary))
        if max_memory and rss > max_memory:
            full = True
            _give_back(wire, queued, BACK)


def _fields_of(summary: Summary) -> tuple[Any, ...]:
    return (summary.state, summary.text, summary.traceback, summary.runtime, summary.requeue)


def _give_back(wire: Wire, queued: collections.deque[tuple[int, Any]], message: Any) -> None:
    seqs = [seq for seq, _ in queued]
    if message != BACK:  # a batch that arrived after this child filled up
        seqs += [seq for seq, _ in message]
    queued.clear()
    if seqs:
        wire.send(Back(seqs))


def run_one(executor: Executor, ctx: Context) -> Outcome:
    """Run one task in this child (the parent enforces its hard time limit)."""
    global _running
    _running = True
    try:
        return executor.execute(ctx, inline_hard_limit=False)
    except Exception as exc:
        return internal_error(f"task {ctx.task}[{ctx.id}]", exc)
    finally:
        _running = False


def soft_limit_now(signum: int, frame: Any) -> None:
    """SIGUSR1 (Celery's signal for it, e.g. ``revoke(terminate=True,
    signal="SIGUSR1")``) raises ``SoftTimeLimitExceeded`` in the running task."""
    if _running:
        raise SoftTimeLimitExceeded("SIGUSR1 received")


def rss_kib() -> int:
    """This process's resident memory in KiB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def close_quietly(item: Any) -> None:
    """Close a file descriptor or an object with ``close()``; one already gone is fine."""
    try:
        if isinstance(item, int):
            os.close(item)
        else:
            item.close()
    except OSError:
        pass
