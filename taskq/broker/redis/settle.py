"""Settling the Redis broker's leased messages: ack, requeue, dead-letter.

Settling is idempotent (HDEL; scripts that check the tag is still leased), so when
Redis cannot be reached it is retried with each heartbeat rather than failed: the
messages stay leased to this live consumer meanwhile, and a live consumer's lease
never runs out, so a failed ack would otherwise strand its messages until the
worker stops (and then run them again).

Acks the worker sends with ``ack_soon`` wait in ``PendingAcks`` for the next fetch
(``taskq.broker.redis.acks``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from taskq.broker.base import Delivery
from taskq.broker.redis import scripts
from taskq.broker.redis.acks import Held, PendingAcks
from taskq.broker.redis.dlq import dead_letter_entry
from taskq.broker.redis.options import Keys
from taskq.broker.redis.session import Session
from taskq.errors import BrokerError
from taskq.redisclient.client import unreachable

__all__ = ["Lease", "Settler", "ack_args", "ack_commands"]

logger = logging.getLogger("taskq.broker.redis")

#: Held acks that are sent at once rather than with the next fetch.
ACK_LIMIT = 1000


class Lease(NamedTuple):
    """What ``Delivery.raw`` holds for the Redis broker."""

    source: str  # the list the message came from (its priority list)
    payload: bytes
    leased_at: float = 0.0  # monotonic send time of the call that leased it


class Settler:
    """Ack, requeue and dead-letter the messages one consumer leased.

    Args:
        session: the broker's session (client, keys, options, error reporting).
    """

    def __init__(self, session: Session) -> None:
        client = session.client
        self._session = session
        self._client = client
        self._keys = session.keys
        self._ack_delay = session.settings.ack_delay
        self._requeue_script = client.register_script(scripts.REQUEUE)
        self._dead_letter_script = client.register_script(scripts.DEAD_LETTER)
        #: Acks held for the next fetch (``ack_soon``).
        self.acks = PendingAcks(self._send_acks, self._ack_delay, ACK_LIMIT)
        # Settling that failed because Redis was unreachable: (retry, what), in order.
        self._deferred: list[tuple[Callable[[], None], str]] = []
        self._deferred_lock = threading.Lock()

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """HDEL the tags now (deferred to the next heartbeat when Redis is unreachable)."""
        tags, counters = _ack_fields(deliveries)
        self._settle_or_defer(
            lambda: self._send_acks(tags, counters), f"acknowledge {len(tags)} messages"
        )

    def ack_soon(self, deliveries: Sequence[Delivery]) -> None:
        """Hold the acks for the next fetch, at most ``ack_delay``; 0 acks at once."""
        if self._ack_delay <= 0:
            self.ack(deliveries)
        elif self.acks.add(*_ack_fields(deliveries)):
            self.flush_acks()

    def _send_acks(self, tags: list[str], counters: list[str]) -> None:
        if not tags:
            return
        with self._session.translate(f"acknowledge {len(tags)} messages"):
            if not counters:
                self._client.hdel(self._keys.inflight, *tags)
                return
            pipe = self._client.pipeline(transaction=False)
            queue: Callable[..., Any] = pipe.execute_command  # untyped in redis-py
            for command in ack_commands(self._keys, (tags, counters, 0.0)):
                queue(*command)
            pipe.execute()

    def flush_acks(self) -> None:
        """Send the held acks now; when that fails they stay held (and are retried)."""
        try:
            self.acks.flush()
        except BrokerError as exc:
            logger.warning("Could not send %d held ack(s), will retry: %s", len(self.acks), exc)

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Held acks first, then push the messages back (see ``RedisBroker.requeue``)."""
        deliveries = list(deliveries)
        self.flush_acks()
        self._settle_or_defer(
            lambda: self._requeue(deliveries), f"requeue {len(deliveries)} messages"
        )

    def _requeue(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        tags = [d.tag for d in reversed(deliveries)]
        with self._session.translate(f"requeue {len(tags)} messages"):
            _, errors = self._requeue_script([self._keys.inflight], tags)
        if errors:
            self._session.log_refused("requeue messages (they stay leased)", errors)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to the dead-letter list (see ``RedisBroker.dead_letter``)."""
        self._settle_or_defer(
            lambda: self._dead_letter(delivery, reason), f"dead-letter message {delivery.tag}"
        )

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        lease = lease_of(delivery)
        entry = dead_letter_entry(delivery.tag, delivery.queue, lease.source, lease.payload, reason)
        counter = _counter_field(lease.payload) if delivery.delivery_count > 1 else ""
        keys = [self._keys.inflight, self._keys.dlq, self._keys.deliveries]
        with self._session.translate(f"dead-letter message {delivery.tag}"):
            moved = self._dead_letter_script(keys, [delivery.tag, entry, counter])
        if not moved:
            logger.warning(
                "Message %s from queue %r was not dead-lettered (%s): this consumer's lease "
                "on it had run out and it is back in its queue.",
                delivery.tag,
                delivery.queue,
                reason,
            )

    def _settle_or_defer(self, settle: Callable[[], None], what: str) -> None:
        try:
            settle()
        except BrokerError as exc:
            if not unreachable(exc):
                raise
            with self._deferred_lock:
                self._deferred.append((settle, what))
            logger.warning("%s Will %s with the next heartbeat.", exc, what)

    def retry_deferred(self) -> None:
        """Carry out the settling that failed while Redis was unreachable, in order.

        Raises:
            BrokerError: Redis is still unreachable (what is left stays deferred).
        """
        with self._deferred_lock:
            pending, self._deferred = self._deferred, []
        for done, (settle, _) in enumerate(pending):
            try:
                settle()
            except BrokerError:
                with self._deferred_lock:
                    self._deferred[:0] = pending[done:]
                raise
        if pending:
            logger.info("Redis is back: carried out %d deferred ack(s)/requeue(s)", len(pending))

    def close(self) -> None:
        """Send held acks and deferred settling; log what could not be sent."""
        self.acks.close()
        try:
            self.acks.flush()
            self.retry_deferred()
        except BrokerError as exc:
            logger.error(
                "Closing with %d held ack(s) and %d deferred ack(s)/requeue(s) not done "
                "(%s): their messages return to their queues when this consumer's lease "
                "runs out.",
                len(self.acks),
                len(self._deferred),
                exc,
            )


def lease_of(delivery: Delivery) -> Lease:
    if not isinstance(delivery.raw, Lease):
        raise ValueError(f"Delivery {delivery.tag!r} was not fetched by a RedisBroker")
    return delivery.raw


def _counter_field(payload: bytes) -> str:
    return hashlib.sha1(payload).hexdigest()


def _ack_fields(deliveries: Sequence[Delivery]) -> tuple[list[str], list[str]]:
    """The tags of ``deliveries`` and the delivery counters to drop with them."""
    tags = [d.tag for d in deliveries]
    counters = [_counter_field(lease_of(d).payload) for d in deliveries if d.delivery_count > 1]
    return tags, counters


def ack_args(held: Held) -> list[Any]:
    """The fetch script's trailing ARGV for held acks (see ``scripts.FETCH``)."""
    tags, counters, _ = held
    return [len(tags), *tags, *counters]


def ack_commands(keys: Keys, held: Held) -> list[tuple[Any, ...]]:
    """The HDELs that send held acks on their own (none when nothing is held)."""
    tags, counters, _ = held
    commands: list[tuple[Any, ...]] = []
    if tags:
        commands.append(("HDEL", keys.inflight, *tags))
        if counters:
            commands.append(("HDEL", keys.deliveries, *counters))
    return commands
