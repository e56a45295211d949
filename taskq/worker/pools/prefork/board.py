"""What a consuming prefork child shows its parent without a message per task: a
page of memory shared between the two (an anonymous ``mmap`` made before the fork).

The child writes, the parent only reads. The child writes its consumer's lease id
once, and around each task what the parent needs to supervise it: the task's id
and name, when it started, its hard-time-limit deadline, whether it was acked at
start, and the message as its broker leased it (tag, list, payload), so that the
parent can settle it if the child dies. Between tasks the child also writes how
many messages it holds (for autoscale) and how many tasks it ran.

A write is bracketed by a generation counter (odd while writing); a reader that
sees it odd or changed reads again, so it never acts on half a write. A payload
larger than the page is not copied (``Running.payload`` is None): the parent then
finds the message in the child's lease, where an acks-late one still is.
"""

from __future__ import annotations

import itertools
import mmap
import struct
import time
from typing import NamedTuple

__all__ = ["Board", "Running"]

#: gen, state, acks_late, held, tasks, started (unix), deadline (monotonic, 0: none),
#: and the lengths of the lease id, of the text (tag, task id, name and source list,
#: NUL-separated) and of the payload.
_HEAD = struct.Struct("=QBBIQddHHI")
_GEN = struct.Struct("=Q")
_STATE = struct.Struct("=BBIQ")  # the head's fields after gen, up to tasks
_LEASE_MAX = 512
_ATTEMPTS = 1000
_SIZE = 64 * 1024
_IDLE, _RUNNING = 0, 1
_TOO_BIG = 0xFFFFFFFF


class Running(NamedTuple):
    """The task a child is running, as its board shows it."""

    tag: str
    task_id: str
    name: str
    started: float  # unix time
    deadline: float  # monotonic; 0.0: no hard time limit
    acks_late: bool
    source: str
    payload: bytes | None  # None: too big for the board


class Board:
    """One child's page; see the module docstring. Made by the parent before the fork."""

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, _SIZE)
        self._gen = 0  # even: written in full
        self._at = _HEAD.size  # where the text starts, after the lease id
        self._lease = b""
        self._tasks = 0
        self._held = 0

    def close(self) -> None:
        self._page.close()

    # -- the child's side --------------------------------------------------------------

    def set_lease(self, lease_id: str) -> None:
        self._lease = lease_id.encode("utf-8")[:_LEASE_MAX]
        self._at = _HEAD.size + len(self._lease)
        page = self._page
        page[_HEAD.size : self._at] = self._lease
        self._gen += 2
        _HEAD.pack_into(page, 0, self._gen, _IDLE, 0, 0, 0, 0.0, 0.0, len(self._lease), 0, 0)

    def begin(
        self,
        tag: str,
        task_id: str,
        name: str,
        deadline: float,
        acks_late: bool,
        source: str,
        payload: bytes,
    ) -> None:
        """A task starts: show it (before it runs, so a death in it is seen)."""
        text = f"{tag}\0{task_id}\0{name}\0{source}".encode()[: _SIZE // 2]
        at = self._at
        size = len(payload) if at + len(text) + len(payload) <= _SIZE else _TOO_BIG
        page = self._page
        _GEN.pack_into(page, 0, self._gen + 1)  # odd: a write is under way
        page[at : at + len(text)] = text
        if size != _TOO_BIG:
            page[at + len(text) : at + len(text) + size] = payload
        self._gen += 2
        _HEAD.pack_into(
            page,
            0,
            self._gen,
            _RUNNING,
            acks_late,
            self._held,
            self._tasks,
            time.time(),
            deadline,
            len(self._lease),
            len(text),
            size,
        )

    def end(self, held: int) -> None:
        """The task ended (its outcome settled); ``held`` messages remain leased."""
        self._tasks += 1
        self._held = held
        page = self._page
        _GEN.pack_into(page, 0, self._gen + 1)
        _STATE.pack_into(page, 8, _IDLE, 0, held, self._tasks)
        self._gen += 2
        _GEN.pack_into(page, 0, self._gen)

    # -- the parent's side -------------------------------------------------------------

    def read(self) -> tuple[str, int, int, Running | None]:
        """The child's lease id, messages held, tasks run, and its running task."""
        page = self._page
        for attempt in itertools.count():
            head = _HEAD.unpack_from(page, 0)
            gen = head[0]
            # A child killed mid-write leaves it odd for good: then take what is there.
            if gen % 2 and attempt < _ATTEMPTS:
                time.sleep(0)
                continue
            _, state, acks_late, held, tasks, started, deadline, lease_size, size, full = head
            body_size = lease_size + size + (full if full != _TOO_BIG else 0)
            body = page[_HEAD.size : _HEAD.size + min(body_size, _SIZE - _HEAD.size)]
            if _GEN.unpack_from(page, 0)[0] == gen or attempt >= _ATTEMPTS:
                break
        lease = body[:lease_size].decode("utf-8", "replace")
        running = None
        if state == _RUNNING:
            text = body[lease_size : lease_size + size].decode("utf-8", "replace")
            tag, task_id, name, source = (text.split("\0") + ["", "", "", ""])[:4]
            payload = None if full == _TOO_BIG else body[lease_size + size : body_size]
            running = Running(
                tag, task_id, name, started, deadline, bool(acks_late), source, payload
            )
        return lease, held, tasks, running
