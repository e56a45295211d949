"""``celery.chord_unlock``: the task Celery sends to finish a chord when its result
backend cannot count chord parts (the database backend, among others).

Celery's producer then sends the header and one ``celery.chord_unlock`` message
with the header's result ids; the task polls the results and retries itself every
``interval`` seconds until all are ready, then sends the body with their values,
or fails it with ``ChordError`` if one failed. Every taskq app registers it, so
taskq workers finish such chords from Celery producers. taskq's own chords never
send it: taskq counts chord parts on every backend (``taskq.canvas.hooks``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskq.canvas.hooks import decide_failure
from taskq.canvas.results import GroupResult, from_tuple
from taskq.canvas.signature import Signature
from taskq.errors import ChordError
from taskq.result import _value, states

if TYPE_CHECKING:
    from taskq.app import App

#: Celery's default ``result_chord_retry_interval``.
DEFAULT_INTERVAL = 1.0


def register_chord_unlock(app: App) -> None:
    """Register ``celery.chord_unlock`` on ``app`` (every app has it)."""

    @app.task(name="celery.chord_unlock", bind=True, max_retries=None, ignore_result=True)
    def unlock_chord(
        self: Any,
        /,
        group_id: str,
        callback: dict[str, Any],
        interval: float | None = None,
        max_retries: int | None = None,
        result: list[Any] | None = None,
        **_: Any,  # Celery's _chord_unlock_exchange_type: routing for retries
    ) -> None:
        header = GroupResult(group_id, [from_tuple(r, app) for r in result or []], app=app)
        if not header.ready():
            self.retry(
                countdown=DEFAULT_INTERVAL if interval is None else interval,
                max_retries=max_retries,
            )
        body = Signature.from_dict(callback, app)
        for member, meta in zip(header.leaves(), header.metas(), strict=True):
            if meta is not None and meta["status"] in states.PROPAGATE_STATES:
                error = ChordError(f"Dependency {member.id} raised {_value(meta)!r}")
                decide_failure(app, body, error)
                return
        body.delay(header.get(timeout=0))
