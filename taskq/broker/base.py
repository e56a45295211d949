"""The broker contract every transport implements.

taskq talks to brokers through this small pull-based interface rather than through
kombu's callback consumers, so that a transport can fetch and lease messages in
one atomic step and acknowledge them in batches. Messages keep kombu's envelope
layout (body, content type and encoding, headers, properties), so Celery and
kombu producers and taskq workers share queues.

Threading: ``fetch`` is called from one thread (the worker's consumer). Every
other method is safe to call from any thread.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from taskq.message import Envelope
from taskq.queues import Queues, QueueSpec

__all__ = ["Broker", "DeadLetter", "Delivery", "Envelope", "QueueDepth", "QueueSpec"]


@dataclass
class Delivery:
    """A message handed to this consumer and leased to it until acked or returned.

    Attributes:
        envelope: the message.
        queue: the queue it came from.
        tag: the transport's handle for ack/requeue (unique per delivery).
        delivery_count: 1 on the first delivery; grows each time the message was
            given back because its consumer died (the poison guard reads it).
        raw: transport-private data (the raw payload, a kombu message, ...).
    """

    envelope: Envelope
    queue: str
    tag: str
    delivery_count: int = 1
    raw: Any = None


@dataclass(frozen=True)
class LeaseRenewer:
    """Renews one consumer's lease, and nothing else, on connections of its own.

    ``renew`` and ``close`` are called from one thread, the one that asked for it:
    a worker in a gevent or eventlet process renews from a thread of the OS, so a
    task that blocks the event loop cannot let the lease run out
    (``Broker.lease_renewer``).
    """

    renew: Callable[[], None]
    close: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class DeadLetter:
    """A message parked in the dead-letter queue with the reason it was put there."""

    id: str
    queue: str
    reason: str
    envelope: Envelope
    time: float


@dataclass(frozen=True)
class QueueDepth:
    """How many messages one queue holds, as an operator counts them.

    Attributes:
        ready: waiting to be fetched now (leased ones are not counted).
        delayed: waiting for their ETA in the broker's delayed store; None when the
            broker cannot count them per queue (RabbitMQ's delay levels mix queues).
        dead: parked in the dead-letter queue after coming from this queue; None
            when the broker cannot count them per queue without reading them all.
    """

    ready: int
    delayed: int | None = None
    dead: int | None = None


class Broker(abc.ABC):
    """Publishing and consuming for one broker URL.

    ``queues`` says how to declare each queue (``taskq.queues``); every broker
    accepts the options ``lease_timeout`` (seconds before the messages
    of a consumer that stopped heartbeating go back to their queues) and
    ``connect_timeout`` (seconds); others are transport-specific.

    Attributes:
        supports_delayed: True when ``publish(eta=...)`` keeps the message in a
            delayed store outside any worker's prefetch until it is due. When False
            the worker holds ETA messages itself (Celery's behaviour).
    """

    supports_delayed: bool = False

    def __init__(
        self,
        url: str,
        *,
        consumer_id: str,
        options: dict[str, Any] | None = None,
        queues: Queues | None = None,
    ):
        self.url = url
        self.consumer_id = consumer_id
        self.options = dict(options or {})
        #: How each queue is declared (``taskq.queues``): the same table in every
        #: process of an app, so producers and workers declare alike.
        self.queues = queues if queues is not None else Queues({})

    @abc.abstractmethod
    def declare(self, queues: Sequence[QueueSpec]) -> None:
        """Create the queues if they do not exist (idempotent)."""

    @abc.abstractmethod
    def publish(
        self,
        envelope: Envelope,
        queue: str,
        *,
        priority: int | None = None,
        eta: float | None = None,
    ) -> None:
        """Hand one message to the broker; return only once the broker has it.

        Args:
            envelope: the message.
            queue: destination queue name.
            priority: 0-9; ordering as the transport defines (documented per broker).
            eta: unix time before which the message must not be delivered. Brokers
                with ``supports_delayed`` keep it in their delayed store; others
                deliver at once and leave the wait to the worker.

        Raises:
            BrokerError: the broker cannot be reached or refused the message.
        """

    def publish_many(self, items: Sequence[tuple[Envelope, str, int | None]]) -> None:
        """Publish ``(envelope, queue, priority)`` triples, in as few round trips as the
        transport allows. The default publishes one at a time."""
        for envelope, queue, priority in items:
            self.publish(envelope, queue, priority=priority)

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Return once every message published so far is stored by the broker. Brokers
        whose ``publish`` returns only then (the default) have nothing to do; RabbitMQ
        with ``publish_confirms="pipelined"`` waits for the outstanding confirms.

        Raises:
            BrokerError: they could not be confirmed (``MessageRefused``: the broker
                refused some; retrying cannot help).
        """

    @abc.abstractmethod
    def fetch(
        self, queues: Sequence[str], max_count: int, timeout: float, *, read_ahead: bool = False
    ) -> list[Delivery]:
        """Lease up to ``max_count`` messages from ``queues`` to this consumer.

        Blocks up to ``timeout`` seconds for the first message and returns as soon
        as at least one is leased (an empty list after the timeout). A message is
        never in a state where a crash of this process loses it: it is either in
        its queue or leased to this consumer, and leases of a consumer that stops
        heartbeating return to their queues. Due delayed messages become deliverable
        here.

        ``read_ahead`` allows the transport, when it leased ``max_count``, to lease
        the next batch right away, while the caller works on this one, and hand it
        over with the next call (Redis does; the others ignore it). ``close`` gives
        back what was read ahead and not handed over. The worker asks for it only
        while its tasks are short (see ``taskq.worker.worker``).
        """

    @abc.abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """The messages are done: remove them for good. Final even when the lease
        already ran out; a message that no longer exists is a no-op."""

    def ack_soon(self, deliveries: Sequence[Delivery]) -> None:
        """``ack``, which the transport may hold back briefly to send several in one
        round trip (the worker acks this way). A held ack is sent within the
        transport's bound (Redis: option ``ack_delay``) and by ``heartbeat``,
        ``requeue`` and ``close``; if the process dies first, the message is
        delivered again, as after a crash just before an ``ack``. The default acks
        at once."""
        self.ack(deliveries)

    @abc.abstractmethod
    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Give unstarted or interrupted messages back to their queues at once,
        without counting a delivery attempt. Only messages still leased to this
        consumer move; others are left alone."""

    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a message to the dead-letter queue with ``reason`` and release it
        (final, like ``ack``)."""

    def heartbeat(self) -> None:  # noqa: B027 - optional hook
        """Renew this consumer's lease and return messages of consumers whose lease
        ran out. The worker calls it every ``worker_lease_timeout / 3`` seconds."""

    def lease_renewer(self) -> LeaseRenewer:
        """A ``LeaseRenewer`` for this consumer's lease, safe to use from a thread
        that shares nothing with this broker's connections. Default: ``heartbeat``,
        for brokers whose heartbeat opens its own connection per thread (SQLite) or
        has nothing to renew."""
        return LeaseRenewer(self.heartbeat)

    @abc.abstractmethod
    def purge(self, queue: str) -> int:
        """Delete every waiting message in ``queue`` (delayed ones included; leased ones
        stay); return how many."""

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """List parked messages, oldest first."""
        raise NotImplementedError(f"{type(self).__name__} has no dead-letter queue")

    def requeue_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        """Put parked messages back on their queues (all when ``ids`` is None)."""
        raise NotImplementedError(f"{type(self).__name__} has no dead-letter queue")

    def purge_dead_letters(self) -> int:
        """Delete every parked message; return how many."""
        raise NotImplementedError(f"{type(self).__name__} has no dead-letter queue")

    def queue_depths(self, queues: Sequence[str]) -> dict[str, QueueDepth]:
        """Each queue's ready, delayed and dead-lettered counts (a dashboard's view).

        Read only; each call costs the broker a scan of its delayed store and
        dead-letter queue where it keeps those per queue (Redis), so callers poll
        it every few seconds, not per message.

        Raises:
            BrokerError: the broker cannot be reached.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot count its queues")

    def still_leased(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` is still leased to this consumer, so that running it
        now cannot duplicate a run elsewhere. The worker asks just before it starts a
        message. Lease-based transports answer False when this consumer's lease
        lapsed (it was paused longer than ``lease_timeout``) and the message went back
        to its queue; checking costs a round trip only then. Default: True."""
        return True

    def give_back_read_ahead(self) -> None:  # noqa: B027 - optional hook
        """Requeue at once what ``fetch(read_ahead=True)`` leased and did not hand
        over yet (the worker calls it when it stops fetching). Default: nothing is
        ever read ahead."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (a transport may release only the calling thread's).
        Leased messages stay leased until the lease runs out (call ``requeue`` first
        to hand them back at once)."""
