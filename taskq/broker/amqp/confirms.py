"""Publisher confirms collected as they come, rather than one round trip a publish.

A RabbitMQ channel in confirm mode numbers what it publishes 1, 2, 3, ... and the
broker later acks (stored) or nacks (refused) each number, often many at once
(``multiple``). ``Unconfirmed`` keeps every message published and not confirmed
yet, by number, so that:

* a confirm settles it (a nack files it under ``refused``, to be reported);
* when the connection fails before its confirm came, ``reset`` gives back every
  unconfirmed message, in order, to be published again on the next connection:
  at least once, never lost (the broker may then hold it twice);
* the publisher can bound how many wait (``len``) and how old the oldest is.

Not thread-safe: the broker calls it under its publish lock.
"""

from __future__ import annotations

import collections
import time
from typing import Any

__all__ = ["Unconfirmed"]


class Unconfirmed:
    """Messages published on the current channel, waiting for their confirm."""

    def __init__(self) -> None:
        self._seq = 0
        self._progress = 0.0  # when the last confirm came (monotonic)
        self._waiting: collections.OrderedDict[int, tuple[float, Any]] = collections.OrderedDict()
        #: Messages the broker refused (a nack), waiting to be reported.
        self.refused: list[Any] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def sent(self, item: Any) -> int:
        """``item`` was published on the channel: its number."""
        self._seq += 1
        self._waiting[self._seq] = (time.monotonic(), item)
        return self._seq

    def waiting_for(self, seq: int) -> bool:
        return seq in self._waiting

    def stalled_since(self) -> float | None:
        """Since when (monotonic) the broker has confirmed nothing while messages
        waited: the later of the last confirm and the oldest message's publish. None
        when none waits. A broker that confirms slowly but steadily is not stalled."""
        if not self._waiting:
            return None
        return max(self._progress, self._waiting[next(iter(self._waiting))][0])

    def on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, None)

    def on_nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, self.refused)

    def _settle(self, tag: int, multiple: bool, into: list[Any] | None) -> None:
        self._progress = time.monotonic()
        waiting = self._waiting
        if not multiple:
            entry = waiting.pop(tag, None)
            if entry is not None and into is not None:
                into.append(entry[1])
            return
        while waiting:
            seq = next(iter(waiting))
            if seq > tag:
                break
            _, (_, item) = waiting.popitem(last=False)
            if into is not None:
                into.append(item)

    def forget_from(self, seq: int) -> None:
        """Drop messages ``seq`` and after: a batch whose publish raised (its caller
        sends it again), so the next connection does not send them a second time."""
        for number in [n for n in self._waiting if n >= seq]:
            del self._waiting[number]

    @property
    def next_seq(self) -> int:
        return self._seq + 1

    def reset(self) -> list[Any]:
        """The channel is gone: every unconfirmed message, in publish order, and a
        new numbering for the next channel."""
        items = [item for _, item in self._waiting.values()]
        self._waiting.clear()
        self._seq = 0
        return items
