"""The result backend contract.

A backend implements a handful of key-value primitives (``get``, ``mget``,
``set``, ``delete``, ``incr``) and inherits the rest: storing task state,
reading it back, waiting for it, revoked ids and counters. Keys and the stored
meta follow Celery's layout (``celery-task-meta-<id>`` holding
``{"status", "result", "traceback", "date_done", "task_id", ...}``), so Celery
clients can read taskq results and the other way round.

Storing an outcome survives a backend outage: ``store`` retries a ready state
(SUCCESS, FAILURE, REVOKED) the backend could not take, with exponential backoff,
as Celery does with ``result_backend_always_retry`` (see ``StoreRetry``).
"""

from __future__ import annotations

import abc
import builtins
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from taskq import serialization
from taskq.errors import BackendError, SecurityError, TaskqError, TimeoutError
from taskq.result import READY_STATES, State, task_key

if TYPE_CHECKING:
    from taskq.backends.chords import ChordKeys
    from taskq.config import Settings
    from taskq.security import Sealer

log = logging.getLogger("taskq.backends")

REVOKED_KEY_PREFIX = "taskq-revoked-"


def _mapping(meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise TypeError(f"result meta must be a mapping, got {type(meta).__name__}")
    return meta


def not_ready_error(task_id: str, timeout: float | None) -> TimeoutError:
    """The error ``wait_for`` raises when ``task_id`` is not ready in time."""
    return TimeoutError(f"task {task_id} not ready after {timeout}s")


@dataclasses.dataclass(frozen=True)
class StoreRetry:
    """How ``Backend.store`` retries a ready state the backend could not take.

    Retry ``n`` (from 0) sleeps between half and all of
    ``min(max_sleep, base_sleep * 2 ** n)`` seconds ("equal jitter": workers that
    lost the backend together do not come back in step, and the total wait has a
    floor as well as a ceiling, see ``budget``). Only errors the backend calls
    ``recoverable`` are retried.

    Attributes:
        enabled: retry at all (``result_backend_always_retry``).
        max_retries: retries after the first attempt (``result_backend_max_retries``).
        base_sleep: seconds (``result_backend_base_sleep_between_retries_ms`` / 1000).
        max_sleep: seconds (``result_backend_max_sleep_between_retries_ms`` / 1000).
    """

    enabled: bool = True
    max_retries: int = 20
    base_sleep: float = 0.01
    max_sleep: float = 10.0

    @classmethod
    def from_settings(cls, conf: Settings) -> StoreRetry:
        return cls(
            enabled=conf.result_backend_always_retry,
            max_retries=conf.result_backend_max_retries,
            base_sleep=conf.result_backend_base_sleep_between_retries_ms / 1000,
            max_sleep=conf.result_backend_max_sleep_between_retries_ms / 1000,
        )

    def cap(self, retry: int) -> float:
        """The longest sleep before retry number ``retry`` (from 0)."""
        return min(self.max_sleep, self.base_sleep * 2.0 ** min(retry, 64))

    def delay(self, retry: int, draw: Callable[[], float] = random.random) -> float:
        """The sleep before retry number ``retry``: half its cap plus a random half."""
        cap = self.cap(retry)
        return cap / 2 + draw() * cap / 2

    def budget(self) -> tuple[float, float]:
        """The least and the most seconds all retries sleep: an outage shorter than
        the first is always ridden out. 20 retries from 10 ms to 10 s: 55 s to 110 s."""
        total = sum(self.cap(n) for n in range(self.max_retries)) if self.enabled else 0.0
        return total / 2, total


class Backend(abc.ABC):
    """Stores task state and results keyed by task id.

    Args:
        url: the backend URL.
        expires: seconds after which stored results are removed (None: never).
        serializer: how meta is encoded (``result_serializer``).
        accept: content types accepted when reading (``result_accept_content``).
        options: backend-specific options (``result_backend_transport_options``).
        store_retry: how ``store`` retries a ready state the backend could not take.
        sealer: signs (and encrypts) what is stored and refuses what is not signed
            (``taskq.security``; None: results are plain).
    """

    #: True when ``wait_for`` is woken by the backend instead of polling.
    push_based: bool = False
    #: Celery's chord keys, when this backend keeps them (Redis); None: chords are
    #: counted with ``add_member`` and ``incr`` (``taskq.canvas.hooks``).
    chords: ChordKeys | None = None

    def __init__(
        self,
        url: str,
        *,
        expires: float | None = 86400.0,
        serializer: str = "json",
        accept: Sequence[str] = ("json",),
        options: dict[str, Any] | None = None,
        store_retry: StoreRetry | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        self.url = url
        self.store_retry = store_retry or StoreRetry()
        self.sealer = sealer
        self.expires = expires
        self.serializer = serializer
        self.accept = tuple(accept)
        self.options = dict(options or {})
        self._configure()

    def _configure(self) -> None:  # noqa: B027 - optional hook
        """Set up the store from ``self.url`` and ``self.options`` (subclasses)."""

    # -- primitives ------------------------------------------------------------------

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None."""

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values for several keys in one round trip where the store allows."""
        return [self.get(key) for key in keys]

    @abc.abstractmethod
    def set(self, key: str, value: bytes, expires: float | None) -> None:
        """Store ``value`` under ``key``, removed after ``expires`` seconds (None: kept)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (no error when missing)."""

    @abc.abstractmethod
    def incr(self, key: str, expires: float | None) -> int:
        """Atomically add one to the integer at ``key`` (missing counts as 0); return it."""

    def add_member(self, key: str, member: str, expires: float | None) -> int:
        """Add ``member`` to the set at ``key`` and return the set's size.

        Adding a member that is already there changes nothing, so a count kept this
        way survives duplicate deliveries (the chord counter adds each header task's
        index: a task run twice counts once). The size counts at least every add
        that finished before this one: the add that completes a set always sees the
        full size, and concurrent adds may see it too, so a caller that must act on
        the full size once claims that with ``incr``. ``expires``: seconds the set
        is kept after this add (None: no new deadline); a backend may expire the
        set as a whole (Redis) or member by member (SQL). The key holds a set: use
        it only through this method.

        This default, for backends that only implement the primitives above, marks
        the member with a counter of its own and counts it on the first mark: right
        under concurrency, but a crash between the two steps loses that member, so
        the built-in backends override it with a write that cannot be half done
        (Redis: SADD and SCARD in one transaction; SQL: one row per member).
        """
        if self.incr(f"{key}:{member}", expires) == 1:
            return self.incr(key, expires)
        return int(self.get(key) or 0)

    def publish_ready(self, key: str, value: bytes) -> None:  # noqa: B027 - optional hook
        """Tell waiters that ``key`` reached a ready state (push-based backends)."""

    def set_ready(self, key: str, value: bytes, expires: float | None) -> None:
        """Store a ready state and wake its waiters: ``set`` then ``publish_ready``.

        Backends that can do both in one round trip (or atomically) override this.
        """
        self.set(key, value, expires)
        self.publish_ready(key, value)

    def set_ready_many(self, items: Sequence[tuple[str, bytes]], expires: float | None) -> None:
        """``set_ready`` for several ``(key, value)`` pairs, in as few round trips as the
        store allows (Redis: one script call; SQL: one transaction). The default writes
        them one by one. Either every pair is stored or the call raises (a retry
        writes them again: a write is idempotent)."""
        for key, value in items:
            self.set_ready(key, value, expires)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def recoverable(self, exc: BackendError) -> bool:
        """Whether trying ``exc``'s operation again may succeed (the backend was
        unreachable, timed out, or is starting). Backends narrow this default."""
        return True

    # -- task state ------------------------------------------------------------------

    def encode(self, meta: dict[str, Any]) -> bytes:
        """``meta`` as stored: serialized, and sealed when a ``sealer`` is set."""
        content_type, encoding, data = serialization.dumps(meta, self.serializer)
        if self.sealer is not None:
            return self.sealer.seal_result(data, content_type, encoding)
        return data

    def decode(self, data: bytes) -> dict[str, Any]:
        """Stored bytes back to meta.

        Raises:
            SecurityError: a ``sealer`` is set and the data is not sealed by a trusted
                key (forged, or written without the keys).
            DecodeError: the data is not valid for the serializer.
        """
        if self.sealer is not None:
            data, content_type, encoding = self.sealer.open_result(data)
            if content_type is not None and encoding is not None:
                return _mapping(serialization.loads(data, content_type, encoding, self.accept))
        return _mapping(serialization.loads_any(data, self.serializer, self.accept))

    def store(
        self,
        task_id: str,
        state: str,
        result: Any,
        *,
        traceback: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record ``state`` and ``result`` (already JSON-safe) for ``task_id``.

        ``extra`` adds fields such as ``name``, ``args``, ``kwargs``, ``worker``,
        ``runtime``, ``retries``, ``queue``. Returns the stored meta.

        A ready state is retried per ``store_retry`` while the error is
        ``recoverable``: the calling thread sleeps between attempts, so a worker
        whose backend is down keeps its tasks' outcomes (and their messages) until
        the backend is back. Other states (STARTED, RETRY, custom) are tried once:
        the outcome supersedes them, and they never replace a ready state already
        stored (as Celery's backends do): a retry's next attempt may finish on
        another thread or worker before this one records RETRY.

        Raises:
            BackendError: the write failed and was not retried, or retries ran out.
        """
        meta = self.state_meta(task_id, state, result, traceback=traceback, extra=extra)
        data = self.encode(meta)
        key = task_key(task_id)
        if state in READY_STATES:
            self._retrying(
                f"store {state} for task {task_id}",
                lambda: self.set_ready(key, data, self.expires),
            )
        elif self._ready(task_id):
            return self.meta(task_id)
        else:
            self.set(key, data, self.expires)
        return meta

    def state_meta(
        self,
        task_id: str,
        state: str,
        result: Any,
        *,
        traceback: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The meta ``store`` writes for ``state`` (Celery's layout), not encoded yet."""
        meta: dict[str, Any] = {
            "status": str(state),  # a State member or a custom state's name
            "result": result,
            "traceback": traceback,
            "children": [],
            "date_done": (
                datetime.now(timezone.utc).isoformat() if state in READY_STATES else None
            ),
            "task_id": task_id,
        }
        if extra:
            meta.update(extra)
        return meta

    def store_ready_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Write ready states ``encode``d by the caller, as ``(task_key(id), data)``
        pairs, with ``set_ready_many``, retried as ``store`` retries a ready state
        (the worker's held results: ``taskq.worker.results``).

        Raises:
            BackendError: the write failed and was not retried, or retries ran out.
        """
        if items:
            self._retrying(
                f"store {len(items)} results",
                lambda: self.set_ready_many(items, self.expires),
            )

    def _ready(self, task_id: str) -> bool:
        try:
            return self.meta(task_id).get("status") in READY_STATES
        except (TaskqError, TypeError, ValueError):  # unreadable or refused (forged)
            return False

    def _retrying(self, what: str, write: Callable[[], None]) -> None:
        policy = self.store_retry
        started = time.monotonic()
        retries = 0
        while True:
            try:
                write()
            except BackendError as exc:
                if not policy.enabled or not self.recoverable(exc):
                    raise
                elapsed = time.monotonic() - started
                if retries >= policy.max_retries:
                    raise BackendError(
                        f"Gave up trying to {what} after {retries} retries over "
                        f"{elapsed:.1f}s: {exc} Raise result_backend_max_retries to wait "
                        "longer for the result backend."
                    ) from exc
                delay = policy.delay(retries)
                retries += 1
                log.log(
                    logging.WARNING if retries == 1 else logging.DEBUG,
                    "Could not %s: %s Retry %d of %d in %.2fs.",
                    what,
                    exc,
                    retries,
                    policy.max_retries,
                    delay,
                )
                time.sleep(delay)
                continue
            if retries:
                log.warning(
                    "Result backend is back: could %s after %d retries (%.1fs).",
                    what,
                    retries,
                    time.monotonic() - started,
                )
            return

    def meta(self, task_id: str) -> dict[str, Any]:
        """The stored meta, or a PENDING meta when nothing is stored."""
        data = self.get(task_key(task_id))
        if data is None:
            return {
                "status": State.PENDING.value,
                "result": None,
                "traceback": None,
                "task_id": task_id,
            }
        meta = self.decode(data)
        if self.sealer is not None and meta.get("task_id") != task_id:
            # A genuine result of another task copied under this one's key.
            raise SecurityError(
                f"the result stored for task {task_id} is signed but belongs to task "
                f"{meta.get('task_id')!r}: it was copied there. Refused."
            )
        return meta

    def forget(self, task_id: str) -> None:
        self.delete(task_key(task_id))

    def wait_for(
        self, task_id: str, timeout: float | None, interval: float = 0.1
    ) -> dict[str, Any]:
        """Block until the task is ready; return its meta.

        The default polls every ``interval`` seconds; push-based backends override.

        Raises:
            TimeoutError: not ready within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            meta = self.meta(task_id)
            if meta["status"] in READY_STATES:
                return meta
            if deadline is None:
                time.sleep(interval)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise not_ready_error(task_id, timeout)
            # Never sleep past the deadline: a 5 s interval must not turn a 1 s timeout into 5 s.
            time.sleep(min(interval, remaining))

    # -- revoked ids -----------------------------------------------------------------

    def mark_revoked(self, task_id: str, expires: float | None) -> None:
        self.set(f"{REVOKED_KEY_PREFIX}{task_id}", b"1", expires)

    # builtins.set: inside this class body plain ``set`` names the ``set`` primitive.
    def revoked(self, task_ids: Sequence[str]) -> builtins.set[str]:
        """Which of ``task_ids`` were revoked (one round trip)."""
        if not task_ids:
            return set()
        values = self.mget([f"{REVOKED_KEY_PREFIX}{tid}" for tid in task_ids])
        return {tid for tid, value in zip(task_ids, values, strict=True) if value is not None}
