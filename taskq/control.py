"""Remote control of workers: revoking tasks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskq.app import App

#: How long a revoked id is remembered when results never expire.
DEFAULT_REVOKE_TTL = 7 * 86400.0


class Control:
    """``app.control``: commands for workers."""

    def __init__(self, app: App) -> None:
        self.app = app

    def revoke(
        self,
        task_id: str | Iterable[str],
        terminate: bool = False,
        signal: str = "SIGTERM",
    ) -> None:
        """Ask workers not to run the task(s).

        Revoked ids are kept in the result backend (for ``result_expires``, or a
        week when results never expire), so a worker started after the revoke
        still honours it. A revoked task that has not started is recorded as
        REVOKED and never runs.
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        backend = self.app.require_backend()
        ttl = self.app.conf.result_expires or DEFAULT_REVOKE_TTL
        for tid in ids:
            backend.mark_revoked(tid, ttl)
