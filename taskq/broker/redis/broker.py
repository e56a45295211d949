"""taskq's own Redis broker: kombu's wire format, per-consumer leases, batched Lua.

Wire format. Queues are the lists kombu's Redis transport uses, so Celery and
kombu producers and consumers share them with taskq; a message is kombu's
virtual-transport JSON envelope (``taskq.broker.envelope``), pushed with LPUSH
and taken from the other end, so FIFO, one list per priority step (0-9, lower is
served first, as kombu does on Redis). ``declare`` writes the
``_kombu.binding.<queue>`` entry that routes a publish to the direct exchange
named like the queue (what Celery does) onto the list; the default exchange
routes by name and needs none.

Leases. A fetch pops messages and records them in this consumer's in-flight hash
in one Lua script (``taskq.broker.redis.scripts``), so a message is always in a
list or in a hash. Leases belong to the consumer, not to the message: the
consumer's deadline in the ``consumers`` zset (Redis ``TIME``, so skewed clocks
agree) is renewed by every fetch and heartbeat, and a task on a live consumer is
never redelivered however long it runs. ``heartbeat`` also reaps: for each
consumer past its deadline it pushes the in-flight and landing messages back to
the consumer end of their lists and counts a delivery for each in-flight one, in
one script, so two reapers never restore a message twice. The count is keyed by
the payload's SHA-1 (a tag is per delivery, the payload is what comes back), so
identical payloads share a count, and a count stays behind if a kombu consumer
takes the message after a reap. Landing messages are not counted: they were never
handed to the application. The lease id is ``consumer_id`` plus a per-instance
random part, so a restarted worker reusing its name never inherits (and keeps
alive) its predecessor's leases.

Acks. ``ack`` is one HDEL. ``ack_soon`` (what the worker uses) holds the tags
until the next fetch script removes them in the same round trip, or at most
``ack_delay`` seconds (0.1 by default; a flusher thread sends what waited that
long), and ``heartbeat``, ``requeue`` and ``close`` send them first. A busy
worker thus acks a whole batch with the fetch of the next one. Until an ack is
sent the message stays leased to this live consumer; only a crash in that window
delivers it again (see ``taskq.broker.redis.acks``).

Lost replies. A fetch's tags are ``<session>.<call number>.<i>``. When a fetch call
fails (connection reset, timeout) the script may still have run, so the next call
reuses the same call number; the script sees tags under that prefix already in
the hash and answers with those messages instead of leasing more. redis-py's own
retry (one, on a connection error or timeout) re-sends the same arguments and is
answered the same way. Without this a lost reply strands messages with a live
consumer (never reaped) and a re-sent call overwrites the first call's tags.
Acks sent with a failed call are sent again (HDEL is idempotent).

Blocking when idle. Lua cannot block and BLMPOP would hold the message only in
the client's socket, so the consumer blocks with ``BLMOVE <list> <landing>``:
the message is always in one list or the other. BLMOVE, then the fetch script
(which adopts landing lists into the in-flight hash and tops the batch up from
every list) go out in one pipeline: one round trip per wake-up. BLMOVE watches
one key: the first queue's priority-0 list, which is where Celery's default
messages land. Every other list (other queues, priority lists) is re-scanned
when the block times out, every ``poll_interval`` seconds (0.25 by default): an
idle consumer sees a message on the first queue within one round trip and
anywhere else within ``poll_interval``, for about four cheap script calls a
second while idle. Only one consumer wakes per message (no thundering herd).

Delayed messages. ``publish(eta=...)`` in the future goes to the ``delayed`` zset
(score ETA, member = unique id + target list + payload). Fetches promote due
members atomically inside the fetch script, at most every 0.5 s or when the
earliest ETA seen is due, so concurrent promoters never move one twice.

Costs. A busy fetch of up to N messages, with the acks of the previous batch, is
one EVALSHA; ``publish_many`` is one pipeline with one LPUSH per list (chunked).

Needs Redis 6.2+ (BLMOVE, RPOP with a count) and a single server (not Cluster).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis
from kombu.transport.virtual.exchange import TopicExchange

from taskq.broker.base import (
    Broker,
    DeadLetter,
    Delivery,
    Envelope,
    LeaseRenewer,
    QueueDepth,
    QueueSpec,
)
from taskq.broker.envelope import (
    PRIORITY_SEP,
    PRIORITY_STEPS,
    clamp_priority,
    decode_payload,
    encode_payload,
    list_key,
    queue_of,
)
from taskq.broker.redis import scripts
from taskq.broker.redis.dlq import DeadLetterList
from taskq.broker.redis.fetch import Fetcher
from taskq.broker.redis.options import BrokerOptions, Keys
from taskq.broker.redis.session import Session
from taskq.broker.redis.settle import Lease, Settler, lease_of
from taskq.queues import Queues
from taskq.redisclient.client import connection_pool

__all__ = ["RedisBroker"]

logger = logging.getLogger(__name__)

_REAP_LIMIT = 100  # dead consumers handled per heartbeat
_PUSH_CHUNK = 1000  # values per LPUSH in publish_many


def _prepare(envelope: Envelope, queue: str, priority: int | None) -> tuple[str, bytes]:
    """The list key and payload for publishing; ``priority`` None takes the envelope's."""
    value = clamp_priority(envelope.properties.get("priority") if priority is None else priority)
    return list_key(queue, value), encode_payload(envelope, queue, value)


def _binding(spec: QueueSpec) -> tuple[str, str]:
    """The exchange of ``spec`` and its member in kombu's binding set."""
    pattern = ""
    if spec.exchange_type == "topic":  # kombu matches topic bindings by regex
        pattern = TopicExchange(None).key_to_pattern(spec.binding_key)
    return spec.exchange_name, PRIORITY_SEP.join([spec.binding_key, pattern, spec.name])


def _tally(flat: Sequence[Any]) -> dict[str, int]:
    """``[name, count, name, count, ...]`` from a script -> ``{name: count}``."""
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in flat[::2]]
    return dict(zip(names, (int(n) for n in flat[1::2]), strict=True))


def _pack(key: str, payload: bytes) -> bytes:
    encoded = key.encode("utf-8")
    return b"%d:%s%s" % (len(encoded), encoded, payload)


class RedisBroker(Broker):
    """The ``Broker`` contract on Redis lists, wire-compatible with kombu and Celery.

    Priorities: 0-9 in kombu's four steps; lower numbers are served first.
    Options: see ``BrokerOptions``. The design is in the module docstring.
    """

    supports_delayed = True

    def __init__(
        self,
        url: str,
        *,
        consumer_id: str,
        options: dict[str, Any] | None = None,
        queues: Queues | None = None,
        lease_id: str | None = None,
    ):
        super().__init__(url, consumer_id=consumer_id, options=options, queues=queues)
        self.settings = BrokerOptions.from_mapping(self.options)
        session = Session(url, consumer_id, self.settings, lease_id)
        self._session = session
        # Taken out once: publishing reads them on every call.
        self._keys = session.keys
        self._client = session.client
        self._line = session.line  # publish and fetch (see taskq.redisclient.line)
        self._translate = session.translate
        self._reap_script = self._client.register_script(scripts.REAP)
        self._release_script = self._client.register_script(scripts.RELEASE)
        self._still_leased_script = self._client.register_script(scripts.STILL_LEASED)
        self._depths_script = self._client.register_script(scripts.DEPTHS)
        self._dlq = DeadLetterList(session)
        self._settler = Settler(session)
        self._fetcher = Fetcher(session, self._settler.acks)
        self._rotation = 0  # fetch calls: which queue goes first
        self._declared: set[str] = set()  # queues whose binding this instance wrote
        # Per queue list: each priority step's (list key, queue) pairs, in queue order.
        self._sources: dict[tuple[str, ...], list[list[tuple[str, str]]]] = {}

    # -- publishing -----------------------------------------------------------------

    def declare(self, queues: Sequence[QueueSpec]) -> None:
        """Write kombu's binding of each queue to its exchange, as Celery does.

        Redis lists need no creation; the binding (``_kombu.binding.<exchange>``,
        member ``<routing key>\\x06\\x16<pattern>\\x06\\x16<queue>``) lets a Celery
        or kombu producer that publishes to the queue's exchange reach the list.
        ``max_priority`` and queue arguments do not apply (Redis always has the four
        priority lists). A producer declares each queue it publishes to once.
        """
        with self._translate("declare queues"):
            pipe = self._client.pipeline(transaction=False)
            for spec in queues:
                exchange, member = _binding(spec)
                pipe.sadd(f"_kombu.binding.{exchange}", member)
                # kombu >= 5.7 keeps a binding table while this set names the queue.
                pipe.sadd(f"_kombu.binding_permanent.{exchange}", member)
            pipe.execute()
        self._declared.update(spec.name for spec in queues)

    def _declare_once(self, queue: str) -> None:
        if queue not in self._declared:
            self.declare([self.queues[queue]])

    def publish(
        self,
        envelope: Envelope,
        queue: str,
        *,
        priority: int | None = None,
        eta: float | None = None,
    ) -> None:
        """LPUSH onto the queue's list for ``priority`` (0 first), or park until ``eta``.

        ``priority`` None takes the envelope's ``priority`` property, else 0.
        """
        self._declare_once(queue)
        key, payload = _prepare(envelope, queue, priority)
        command: tuple[Any, ...] = ("LPUSH", key, payload)
        delayed = eta is not None and eta > time.time()
        if delayed:
            member = uuid.uuid4().hex.encode("ascii") + _pack(key, payload)
            command = ("ZADD", self._keys.delayed, eta, member)
        with self._translate(f"publish to queue {queue!r}"):
            # A timed-out reply is not sent again here: the LPUSH may have run, and the
            # producer's policy decides whether to try again (issue 12).
            self._line.run(*command, retry_timeouts=False)
        if delayed:
            assert eta is not None
            fetcher = self._fetcher
            fetcher.next_due = min(fetcher.next_due, time.monotonic() + eta - time.time())

    def publish_many(self, items: Sequence[tuple[Envelope, str, int | None]]) -> None:
        """One pipeline; messages of one list go in order in multi-value LPUSHes."""
        by_key: dict[str, list[bytes]] = {}
        for queue in {queue for _, queue, _ in items} - self._declared:
            self._declare_once(queue)
        for envelope, queue, priority in items:
            key, payload = _prepare(envelope, queue, priority)
            by_key.setdefault(key, []).append(payload)
        with self._translate(f"publish {len(items)} messages"):
            pipe = self._client.pipeline(transaction=False)
            for key, payloads in by_key.items():
                for start in range(0, len(payloads), _PUSH_CHUNK):
                    pipe.lpush(key, *payloads[start : start + _PUSH_CHUNK])
            pipe.execute()

    def backlog(self, queues: Sequence[str]) -> int:
        """How many messages wait in ``queues`` (every priority list), not leased.

        Raises:
            BrokerError: Redis could not be reached.
        """
        with self._translate("count waiting messages"):
            pipe = self._client.pipeline(transaction=False)
            for queue in queues:
                for step in PRIORITY_STEPS:
                    pipe.llen(list_key(queue, step))
            return sum(int(size) for size in pipe.execute())

    def purge(self, queue: str) -> int:
        """Delete the queue's lists (every priority); return how many messages they held."""
        keys = [list_key(queue, step) for step in PRIORITY_STEPS]
        with self._translate(f"purge queue {queue!r}"):
            pipe = self._client.pipeline(transaction=True)
            for key in keys:
                pipe.llen(key)
            pipe.delete(*keys)
            sizes = pipe.execute()
        return sum(int(size) for size in sizes[:-1])

    # -- consuming --------------------------------------------------------------------

    def fetch(
        self, queues: Sequence[str], max_count: int, timeout: float, *, read_ahead: bool = False
    ) -> list[Delivery]:
        """Lease up to ``max_count`` messages; see ``Broker.fetch`` and the module doc.

        Raises:
            BrokerError: Redis is unreachable or refused the operation.
            ValueError: no queues, or ``max_count`` below 1.
        """
        if not queues or max_count < 1:
            raise ValueError(f"fetch needs queues and max_count >= 1, got {queues!r}, {max_count}")
        sources = self._sources_of(queues)
        try:
            return self._fetcher.fetch(queues, sources, max_count, timeout, read_ahead)
        except redis.RedisError:
            with self._translate(f"fetch from queues {', '.join(queues)}"):
                raise

    def _sources_of(self, queues: Sequence[str]) -> dict[str, str]:
        """The lists to pop, in order (list key -> queue): priority steps first, and the
        queues in turn, so that no queue starves the others."""
        start = self._rotation % len(queues)
        self._rotation += 1
        # The list keys are worked out once per queue list, not once per rotation:
        # a worker on N queues has N rotations, and naming 4 x N lists on every fetch
        # was most of its client-side cost with 100 queues (bench W8, issue 17).
        steps = self._sources.get(tuple(queues))
        if steps is None:
            if len(self._sources) > 64:  # callers that pass ever-new queue lists
                self._sources.clear()
            steps = [[(list_key(q, step), q) for q in queues] for step in PRIORITY_STEPS]
            self._sources[tuple(queues)] = steps
        return dict(pair for lists in steps for pair in (*lists[start:], *lists[:start]))

    # -- settling (taskq.broker.redis.settle) ---------------------------------------

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Drop the messages from this consumer's in-flight hash (one round trip).

        If Redis cannot be reached the ack is retried with each ``heartbeat``.
        """
        self._settler.ack(deliveries)

    def ack_soon(self, deliveries: Sequence[Delivery]) -> None:
        """Hold the acks for the next fetch, at most ``ack_delay`` seconds (see
        ``Broker.ack_soon`` and the module doc); with ``ack_delay`` 0, ``ack``."""
        self._settler.ack_soon(deliveries)

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Push the messages back at the consumer end of their lists, first one next.

        Messages whose lease was already lost (and restored by a reaper) are skipped.
        If Redis cannot be reached the requeue is retried with each ``heartbeat``.
        Held acks are sent first.
        """
        self._settler.requeue(deliveries)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message from this consumer's lease to the dead-letter list.

        A message whose lease was lost is already back in its queue; it is left there
        (and logged) rather than stored twice. If Redis cannot be reached the move is
        retried with each ``heartbeat``.
        """
        self._settler.dead_letter(delivery, reason)

    def heartbeat(self) -> None:
        """Send held acks, renew this consumer's lease, return the messages of expired
        consumers, then retry settling deferred by an outage."""
        self._settler.flush_acks()
        keys = [self._keys.consumers, self._keys.deliveries]
        args: list[str | float] = [
            self.settings.key_prefix,
            self._session.lease_id,
            self.settings.lease_timeout,
            _REAP_LIMIT,
        ]
        sent_at = time.monotonic()
        with self._translate("renew the consumer lease"):
            restored, errors = self._reap_script(keys, args)
        self._session.clock.renewed(sent_at)
        if restored:
            logger.info("Returned %d messages of expired consumers to their queues", restored)
        if errors:
            self._session.log_refused("return messages of expired consumers", errors)
        self._settler.retry_deferred()

    def still_leased(self, delivery: Delivery) -> bool:
        """See ``Broker.still_leased``: a clock read unless this consumer's renewals
        had a gap since the message was leased (``taskq.broker.lease``); then one
        script that checks the tag is still in this consumer's in-flight hash, and
        renews the lease if so.

        Raises:
            BrokerError: the check was needed and Redis could not answer it.
        """
        lease = lease_of(delivery)
        clock = self._session.clock
        if not clock.in_doubt(lease.leased_at):
            return True
        keys = [self._keys.inflight, self._keys.consumers]
        args: list[str | float] = [
            self._session.lease_id,
            self.settings.lease_timeout,
            delivery.tag,
        ]
        sent_at = time.monotonic()
        with self._translate("check a lease"):
            (held,) = self._still_leased_script(keys, args)
        if held:
            clock.renewed(sent_at)
        return bool(held)

    def lease_renewer(self) -> LeaseRenewer:
        """Renew this consumer's lease on a connection of the renewer's own, opened
        on the first ``renew`` in the calling thread: a connection of this broker's
        pool may belong to another thread's event loop (gevent, eventlet)."""
        session = self._session
        pools: list[redis.ConnectionPool] = []
        renew_scripts: list[Any] = []
        args = [session.lease_id, self.settings.lease_timeout]

        def renew() -> None:
            if not renew_scripts:
                name = f"taskq:{session.lease_id}:lease"
                pools.append(connection_pool(self.url, self.settings, name))
                client = redis.Redis(connection_pool=pools[0])
                renew_scripts.append(client.register_script(scripts.RENEW))
            with self._translate("renew the consumer lease"):
                renew_scripts[0]([self._keys.consumers], args)

        def close() -> None:
            for pool in pools:
                pool.disconnect()

        return LeaseRenewer(renew, close)

    # -- another consumer's lease (a prefork child's: taskq.worker.pools.prefork) -------

    @property
    def lease_id(self) -> str:
        """This consumer's name in Redis (its in-flight hash, its lease)."""
        return self._session.lease_id

    def adopt(self, lease_id: str) -> RedisBroker:
        """A broker acting on the lease ``lease_id`` of another consumer of this
        server (a prefork child that died): its acks go out at once, and ``leased``
        and ``release`` settle what that consumer held. Close it after use."""
        options = {**self.options, "ack_delay": 0}
        return RedisBroker(
            self.url,
            consumer_id=self.consumer_id,
            options=options,
            queues=self.queues,
            lease_id=lease_id,
        )

    def raw_of(self, delivery: Delivery) -> tuple[str, bytes]:
        """The list ``delivery`` came from and its payload as leased (with its tag,
        what ``delivery_of`` needs to rebuild it in another process)."""
        lease = lease_of(delivery)
        return lease.source, lease.payload

    def delivery_of(self, tag: str, source: str, payload: bytes) -> Delivery:
        """The delivery ``raw_of`` described, leased under ``tag``."""
        return Delivery(decode_payload(payload), queue_of(source), tag, 1, Lease(source, payload))

    def leased(self) -> list[Delivery]:
        """The messages this consumer holds now (leased, not settled), oldest first.

        Raises:
            BrokerError: Redis could not be reached.
        """
        with self._translate("read a consumer's leased messages"):
            entries: dict[bytes, bytes] = self._client.hgetall(self._keys.inflight)  # type: ignore[assignment]
        deliveries = []
        for tag, entry in entries.items():
            size, _, rest = entry.partition(b":")
            source = rest[: int(size)].decode("utf-8")
            deliveries.append(self.delivery_of(tag.decode("utf-8"), source, rest[int(size) :]))
        return deliveries

    def holding(self, lease_ids: Sequence[str]) -> int:
        """How many messages the consumers ``lease_ids`` hold (leased, not settled).

        Raises:
            BrokerError: Redis could not be reached.
        """
        prefix = self.settings.key_prefix
        with self._translate("count leased messages"):
            pipe = self._client.pipeline(transaction=False)
            for lease_id in lease_ids:
                pipe.hlen(Keys.make(prefix, lease_id).inflight)
            return sum(int(size) for size in pipe.execute())

    def release(self) -> int:
        """Give back everything this consumer still holds, uncounted (in flight and
        landed), and remove it from the consumers; returns how many went back.

        Raises:
            BrokerError: Redis could not be reached (the lease's expiry returns them).
        """
        self._settler.flush_acks()
        args = [self.settings.key_prefix, self._session.lease_id]
        with self._translate("give back a consumer's messages"):
            restored, errors = self._release_script([self._keys.consumers], args)
        if errors:
            self._session.log_refused("give back a consumer's messages", errors)
        return int(restored)

    # -- dead letters -----------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Parked messages, oldest first."""
        return self._dlq.list(limit)

    def requeue_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        """LPUSH parked messages back onto their lists (all when ``ids`` is None)."""
        return self._dlq.requeue(ids)

    def purge_dead_letters(self) -> int:
        """Delete every parked message; return how many."""
        return self._dlq.purge()

    # -- counting ---------------------------------------------------------------------

    def queue_depths(self, queues: Sequence[str]) -> dict[str, QueueDepth]:
        """LLEN of each priority list (one pipeline), then one read-only script that
        counts the delayed zset by target list and the dead-letter list by queue."""
        lists = {queue: [list_key(queue, step) for step in PRIORITY_STEPS] for queue in queues}
        with self._translate("count queue depths"):
            pipe = self._client.pipeline(transaction=False)
            for keys in lists.values():
                for key in keys:
                    pipe.llen(key)
            sizes = iter(pipe.execute())
            delayed_raw, dead_raw = self._depths_script(keys=[self._keys.delayed, self._keys.dlq])
        delayed, dead = _tally(delayed_raw), _tally(dead_raw)
        return {
            queue: QueueDepth(
                ready=sum(int(next(sizes)) for _ in keys),
                delayed=sum(delayed.get(key, 0) for key in keys),
                dead=dead.get(queue, 0),
            )
            for queue, keys in lists.items()
        }

    def give_back_read_ahead(self) -> None:
        """Requeue what was read ahead and not handed over (see ``Broker``)."""
        read_ahead = self._fetcher.drain()
        if read_ahead:
            self._settler.requeue(read_ahead)

    def close(self) -> None:
        """Give back messages read ahead and not handed over, send held acks and
        deferred settling, then disconnect. Messages handed over and not settled stay
        leased until the lease runs out."""
        self.give_back_read_ahead()
        self._settler.close()
        self._session.close()
