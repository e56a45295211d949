"""Which delivery tags a RabbitMQ channel may acknowledge with one ``multiple`` ack.

``basic.ack(tag, multiple=True)`` settles every message delivered on the channel
up to ``tag``: the ones still running and the ones read ahead too. ``Tags`` keeps
the tags in delivery order and hands out, at each flush, the highest tag below
which everything is settled (one frame for the whole run), plus the settled
tags past a gap (a task still running): those are acked one by one, so a long
task never holds back the acks, and with them the prefetch credit, of the
tasks after it.

Not thread-safe: the consumer thread alone calls it (``KombuBroker._flush``).
"""

from __future__ import annotations

import collections

__all__ = ["Tags"]


class Tags:
    """Delivery tags of one channel, in delivery order (see module docstring)."""

    def __init__(self) -> None:
        self._order: collections.deque[int] = collections.deque()
        self._acked: set[int] = set()  # settled by the worker, ack not sent yet
        self._gone: set[int] = set()  # ack or reject sent on its own

    def __len__(self) -> int:
        return len(self._order) - len(self._gone)

    def delivered(self, tag: int) -> None:
        self._order.append(tag)

    def ack(self, tag: int) -> None:
        self._acked.add(tag)

    def rejected(self, tag: int) -> None:
        """A reject (requeue) for ``tag`` was sent: it is no longer outstanding."""
        self._acked.discard(tag)
        self._gone.add(tag)

    def take(self) -> tuple[int | None, list[int]]:
        """``(high, singles)``: ack ``high`` with ``multiple=True`` (None: nothing to),
        then each of ``singles`` alone. Both count as sent once returned."""
        order, acked, gone = self._order, self._acked, self._gone
        high = None
        while order:
            tag = order[0]
            if tag in acked:
                acked.discard(tag)
                high = tag
            elif tag in gone:
                gone.discard(tag)
            else:
                break
            order.popleft()
        singles = sorted(acked)
        acked.clear()
        gone.update(singles)
        return high, singles
