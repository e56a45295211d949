"""The dead-letter queue as an operator sees it: list, requeue, purge.

A thin layer over ``Broker.dead_letters``, ``requeue_dead_letters`` and
``purge_dead_letters`` (``taskq dlq`` calls it): it adds what a person wants to
read about a parked message (its task's name and id) and one actionable error
for brokers that keep no dead-letter queue.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from taskq.broker.base import Broker, DeadLetter
from taskq.errors import BrokerError


@dataclasses.dataclass(frozen=True)
class Parked:
    """One dead-lettered message, summarised.

    Attributes:
        id: what ``requeue`` takes (broker-specific: a Redis delivery tag, an
            AMQP dead-letter id, a SQLite row id).
        queue: the queue it was dead-lettered from (and goes back to).
        reason: why it was dead-lettered.
        time: when, as unix time (0 when unknown).
        task: the task name from its headers, when it has one.
        task_id: the task id from its headers, when it has one.
        content_type: the message's content type.
        size: the body's size in bytes.
    """

    id: str
    queue: str
    reason: str
    time: float
    task: str | None
    task_id: str | None
    content_type: str
    size: int

    @classmethod
    def of(cls, dead: DeadLetter) -> Parked:
        headers = dead.envelope.headers
        task, task_id = headers.get("task"), headers.get("id")
        return cls(
            id=dead.id,
            queue=dead.queue,
            reason=dead.reason,
            time=dead.time,
            task=str(task) if task is not None else None,
            task_id=str(task_id) if task_id is not None else None,
            content_type=dead.envelope.content_type,
            size=len(dead.envelope.body),
        )

    @property
    def when(self) -> str:
        """``time`` as ISO 8601 UTC, or "-"."""
        if not self.time:
            return "-"
        return datetime.fromtimestamp(self.time, timezone.utc).isoformat(timespec="seconds")

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "when": self.when}


def parked(broker: Broker, limit: int = 100) -> list[Parked]:
    """Up to ``limit`` dead-lettered messages, oldest first.

    Raises:
        BrokerError: the broker is unreachable or keeps no dead-letter queue.
    """
    try:
        return [Parked.of(dead) for dead in broker.dead_letters(limit)]
    except NotImplementedError as exc:
        raise _unsupported(broker) from exc


def requeue(broker: Broker, ids: Sequence[str] | None = None) -> int:
    """Put dead-lettered messages back on their queues (all when ``ids`` is None);
    return how many moved. Unknown ids are skipped."""
    try:
        return broker.requeue_dead_letters(None if ids is None else list(ids))
    except NotImplementedError as exc:
        raise _unsupported(broker) from exc


def purge(broker: Broker) -> int:
    """Delete every dead-lettered message; return how many."""
    try:
        return broker.purge_dead_letters()
    except NotImplementedError as exc:
        raise _unsupported(broker) from exc


def _unsupported(broker: Broker) -> BrokerError:
    scheme = broker.url.split("://", 1)[0]
    return BrokerError(
        f"The {scheme}:// broker ({type(broker).__name__}) keeps no dead-letter queue, so "
        "there is nothing to list, requeue or purge. Redis, RabbitMQ and SQLite have one."
    )
