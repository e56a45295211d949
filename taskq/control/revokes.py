"""Persistent revokes: revoked task ids kept in the result backend.

A revoke writes the task's revoked key there (``taskq-revoked-<id>``); a worker
reads those keys for every batch it fetches (so a revoked task never starts, also
on a worker started after the revoke) and, once a second, for the tasks it is
running (so ``terminate=True`` reaches the one worker running the task). It needs
nothing besides a result backend, works the same on every backend and broker
(SQLite too), and costs one ``mget`` per second per busy worker. The value of the
key says whether to terminate and with which signal: ``b"1"`` (do not run) or
``b"terminate:SIGTERM"``. Remote control's broadcast ``revoke`` (Celery's) is sent
as well where the broker can broadcast: it reaches running workers at once.
"""

from __future__ import annotations

import signal as signal_module
from collections.abc import Sequence
from typing import TYPE_CHECKING

from taskq.backends.base import REVOKED_KEY_PREFIX
from taskq.errors import ConfigurationError

if TYPE_CHECKING:
    from taskq.backends.base import Backend

#: How long a revoked id is remembered when results never expire.
DEFAULT_REVOKE_TTL = 7 * 86400.0

_TERMINATE = b"terminate:"


def persist(
    backend: Backend, ids: Sequence[str], terminate: bool, signum: int, ttl: float | None
) -> None:
    """Record ``ids`` as revoked in ``backend`` for ``ttl`` seconds (a week if None)."""
    value = b"1"
    if terminate:
        value = _TERMINATE + signal_module.Signals(signum).name.encode()
    for tid in ids:
        backend.set(f"{REVOKED_KEY_PREFIX}{tid}", value, ttl or DEFAULT_REVOKE_TTL)


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
