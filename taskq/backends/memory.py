"""A result backend in a process-local dict, for tests and ``taskq.testing``.

Each ``MemoryBackend`` instance has its own store: two instances built from
``memory://`` do not share results, so a test's app and its in-process worker
must share one backend object. Nothing survives the process.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from taskq.backends.base import Backend, not_ready_error
from taskq.result import READY_STATES, task_key

# How often expired entries that nobody reads again are swept out, in seconds.
_SWEEP_EVERY = 60.0


class MemoryBackend(Backend):
    """Results in a dict guarded by one ``threading.Condition``.

    Thread-safe. ``wait_for`` sleeps on the condition and is woken when a ready
    state is stored, so it never polls. Expiry uses the monotonic clock.
    ``options`` are accepted and ignored, so a test can swap this backend in for
    one configured with transport options.
    """

    push_based = True

    def _configure(self) -> None:
        self._changed = threading.Condition()
        # key -> (value, monotonic deadline or None for no expiry)
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._next_sweep = time.monotonic() + _SWEEP_EVERY

    # -- primitives ------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        with self._changed:
            return self._live(key, time.monotonic())

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._changed:
            now = time.monotonic()
            return [self._live(key, now) for key in keys]

    def set(self, key: str, value: bytes, expires: float | None) -> None:
        with self._changed:
            now = time.monotonic()
            self._data[key] = (value, None if expires is None else now + expires)
            self._maybe_sweep(now)

    def delete(self, key: str) -> None:
        with self._changed:
            self._data.pop(key, None)

    def incr(self, key: str, expires: float | None) -> int:
        with self._changed:
            now = time.monotonic()
            current = self._live(key, now)
            value = int(current) + 1 if current is not None else 1
            # Like Redis INCR + EXPIRE: a None expiry keeps the key's existing deadline.
            deadline = self._data[key][1] if current is not None else None
            if expires is not None:
                deadline = now + expires
            self._data[key] = (str(value).encode(), deadline)
            return value

    def add_member(self, key: str, member: str, expires: float | None) -> int:
        with self._changed:
            now = time.monotonic()
            current = self._live(key, now)
            # Stored as a JSON list, so get() on the key reads what it holds.
            members = set(json.loads(current)) if current is not None else set()
            members.add(member)
            deadline = self._data[key][1] if current is not None else None
            if expires is not None:
                deadline = now + expires
            self._data[key] = (json.dumps(sorted(members)).encode(), deadline)
            return len(members)

    def publish_ready(self, key: str, value: bytes) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- waiting ---------------------------------------------------------------------

    def wait_for(
        self, task_id: str, timeout: float | None, interval: float = 0.1
    ) -> dict[str, Any]:
        """Block until the task is ready; return its meta. ``interval`` is unused.

        Raises:
            TimeoutError: not ready within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        key = task_key(task_id)
        with self._changed:
            while True:
                data = self._live(key, time.monotonic())
                if data is not None:
                    meta = self.decode(data)
                    if meta["status"] in READY_STATES:
                        return meta
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise not_ready_error(task_id, timeout)
                self._changed.wait(remaining)

    # -- helpers (caller holds the lock) ---------------------------------------------

    def _live(self, key: str, now: float) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        value, deadline = entry
        if deadline is not None and deadline <= now:
            del self._data[key]
            return None
        return value

    def _maybe_sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY
        expired = [k for k, (_, d) in self._data.items() if d is not None and d <= now]
        for key in expired:
            del self._data[key]
