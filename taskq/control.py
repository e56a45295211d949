"""Remote control of workers: revoking tasks.

The control channel is the result backend. A revoke writes the task's revoked
key there (``taskq-revoked-<id>``); a worker reads those keys for every batch it
fetches (so a revoked task never starts, also on a worker started after the
revoke) and, once a second, for the tasks it is running (so
``terminate=True`` reaches the one worker running the task). It needs nothing
besides a result backend, works the same on every backend, and costs one
``mget`` per second per busy worker. The value of the key says whether to
terminate and with which signal: ``b"1"`` (do not run) or ``b"terminate:SIGTERM"``.
"""

from __future__ import annotations

import signal as signal_module
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from taskq.backends.base import REVOKED_KEY_PREFIX
from taskq.errors import ConfigurationError

if TYPE_CHECKING:
    from taskq.backends.base import Backend
    from taskq.backends.store import ResultStore
    from taskq.config import Settings

#: How long a revoked id is remembered when results never expire.
DEFAULT_REVOKE_TTL = 7 * 86400.0

_TERMINATE = b"terminate:"


class Control:
    """``app.control``: commands for workers, through the app's result store."""

    def __init__(self, results: ResultStore, conf: Settings) -> None:
        self.results = results
        self.conf = conf

    def revoke(
        self,
        task_id: str | Iterable[str],
        terminate: bool = False,
        signal: str | int = "SIGTERM",
    ) -> None:
        """Ask workers not to run the task(s).

        Revoked ids are kept in the result backend (for ``result_expires``, or a
        week when results never expire), so a worker started after the revoke
        still honours it. A revoked task that has not started is recorded as
        REVOKED and never runs.

        Args:
            task_id: one id or several.
            terminate: also stop the task if it is running: the prefork pool sends
                ``signal`` to the child running it (within about a second) and
                records REVOKED; the asyncio pool cancels a coroutine task. The
                threads and solo pools cannot stop a running task.
            signal: a signal name (``"SIGTERM"``, ``"KILL"``) or number.
                ``"SIGUSR1"`` raises ``SoftTimeLimitExceeded`` in the task instead.

        Raises:
            ConfigurationError: no result backend, or an unknown signal.
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        value = b"1"
        if terminate:
            value = _TERMINATE + signal_module.Signals(signal_number(signal)).name.encode()
        backend = self.results.require()
        ttl = self.conf.result_expires or DEFAULT_REVOKE_TTL
        for tid in ids:
            backend.set(f"{REVOKED_KEY_PREFIX}{tid}", value, ttl)


def signal_number(name: str | int) -> int:
    """The number of a signal given as ``"SIGTERM"``, ``"term"`` or ``15``.

    Raises:
        ConfigurationError: no such signal on this platform.
    """
    try:
        if isinstance(name, int):
            return int(signal_module.Signals(name))
        upper = name.strip().upper()
        return int(signal_module.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"])
    except (KeyError, ValueError):
        raise ConfigurationError(
            f"Unknown signal {name!r}: give a name such as 'SIGTERM', 'SIGKILL' or 'SIGUSR1'."
        ) from None


def terminations(backend: Backend, task_ids: Sequence[str]) -> dict[str, int]:
    """Which of ``task_ids`` were revoked with ``terminate=True``, and the signal."""
    if not task_ids:
        return {}
    values = backend.mget([f"{REVOKED_KEY_PREFIX}{tid}" for tid in task_ids])
    found: dict[str, int] = {}
    for tid, value in zip(task_ids, values, strict=True):
        if value is not None and value.startswith(_TERMINATE):
            try:
                found[tid] = signal_number(value[len(_TERMINATE) :].decode())
            except (ConfigurationError, UnicodeDecodeError):
                found[tid] = int(signal_module.SIGTERM)
    return found
