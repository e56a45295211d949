"""What a result backend that keeps Celery's chord keys offers the canvas.

A backend with ``Backend.chords`` set (Redis: ``taskq.backends.redis.chord``)
counts chord header tasks in Celery's keys, so Celery and taskq workers share
chords; the others count them taskq's way (``taskq.canvas.hooks``).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

__all__ = ["ChordKeys", "ChordPart"]


@dataclasses.dataclass(frozen=True)
class ChordPart:
    """What counting one header task found.

    Attributes:
        ready: header tasks counted so far (-1: the chord was decided already).
        total: the header size (-1: unknown).
        token: the claim this call took (None: none). Its holder decides the chord
            (sends or fails the body), then calls ``finish``, or ``release`` when
            deciding failed.
    """

    ready: int
    total: int
    token: str | None


class ChordKeys(Protocol):
    """Celery's chord bookkeeping (see ``taskq.backends.redis.chord``)."""

    def set_size(self, group_id: str, size: int) -> None:
        """Before the header is sent: its size."""

    def add_part(
        self, group_id: str, task_id: str, index: int | None, value: bytes, *, size_hint: int = 0
    ) -> ChordPart:
        """Count a header task's outcome (``value``: the serialized
        ``[1, task_id, state, result]``); claim the chord if that completes it."""
        ...

    def claim(self, group_id: str) -> str | None:
        """Claim the chord to decide it now; None when decided or claimed already."""

    def parts(self, group_id: str) -> list[bytes]:
        """Every counted outcome, in ``group_index`` order."""
        ...

    def finish(self, group_id: str, token: str) -> bool:
        """The chord is decided: drop its state, remember it is done."""
        ...

    def release(self, group_id: str, token: str) -> None:
        """Give a claim back (deciding failed; the retried task claims again)."""
