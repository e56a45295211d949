"""taskq's own Redis broker: kombu's wire format, per-consumer leases, batched Lua.

Wire format. Queues are the lists kombu's Redis transport uses, so Celery and
kombu producers and consumers share them with taskq; a message is kombu's
virtual-transport JSON envelope (``taskq.broker.kombu_wire``), pushed with LPUSH
and taken from the other end, so FIFO, one list per priority step (0-9, lower is
served first, as kombu does on Redis). ``declare`` writes the
``_kombu.binding.<queue>`` entry that routes a publish to the direct exchange
named like the queue (what Celery does) onto the list; the default exchange
routes by name and needs none.

Leases. A fetch pops messages and records them in this consumer's in-flight hash
in one Lua script (``taskq.broker.redis_scripts``), so a message is always in a
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
delivers it again (see ``taskq.broker.redis_acks``).

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
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, cast

import redis
from redis.exceptions import NoScriptError

from taskq.broker import redis_scripts
from taskq.broker.base import Broker, DeadLetter, Delivery, Envelope, QueueSpec
from taskq.broker.kombu_wire import (
    MALFORMED_CONTENT_TYPE,
    PRIORITY_SEP,
    PRIORITY_STEPS,
    clamp_priority,
    decode_payload,
    encode_payload,
    list_key,
    malformed,
    priority_step,
    queue_of,
)
from taskq.broker.redis_acks import Held
from taskq.broker.redis_conn import Keys, RedisOptions, make_pool, mask_url, translate
from taskq.broker.redis_dlq import DeadLetterList
from taskq.broker.redis_settle import Lease, Settler, ack_args, pipe_acks
from taskq.errors import BrokerError

__all__ = [
    "CRASH_AFTER_FETCH_ENV",
    "MALFORMED_CONTENT_TYPE",
    "PRIORITY_SEP",
    "PRIORITY_STEPS",
    "RedisBroker",
    "RedisOptions",
    "clamp_priority",
    "decode_payload",
    "encode_payload",
    "list_key",
    "malformed",
    "mask_url",
    "priority_step",
]

logger = logging.getLogger(__name__)

_PROMOTE_EVERY = 0.5  # seconds between delayed-store checks when nothing is known due
_PROMOTE_LIMIT = 1000  # due messages moved per script call
_REAP_LIMIT = 100  # dead consumers handled per heartbeat
_PUSH_CHUNK = 1000  # values per LPUSH in publish_many

#: Test hook (fault-injection suite only): when this environment variable is "1",
#: the process exits with status 70 (``os._exit``, no cleanup) right after a fetch
#: script that leased messages returns, before the client records anything, so the
#: tests can prove a crash in that window loses nothing. Read once per broker.
CRASH_AFTER_FETCH_ENV = "TASKQ_TEST_CRASH_AFTER_FETCH"


def _prepare(envelope: Envelope, queue: str, priority: int | None) -> tuple[str, bytes]:
    """The list key and payload for publishing; ``priority`` None takes the envelope's."""
    value = clamp_priority(envelope.properties.get("priority") if priority is None else priority)
    return list_key(queue, value), encode_payload(envelope, queue, value)


def _pack(key: str, payload: bytes) -> bytes:
    encoded = key.encode("utf-8")
    return b"%d:%s%s" % (len(encoded), encoded, payload)


class RedisBroker(Broker):
    """The ``Broker`` contract on Redis lists, wire-compatible with kombu and Celery.

    Priorities: 0-9 in kombu's four steps; lower numbers are served first.
    Options: see ``RedisOptions``. The design is in the module docstring.
    """

    supports_delayed = True

    def __init__(self, url: str, *, consumer_id: str, options: dict[str, Any] | None = None):
        super().__init__(url, consumer_id=consumer_id, options=options)
        self.settings = RedisOptions.from_mapping(self.options)
        self._safe_url = mask_url(url)
        session = uuid.uuid4().hex[:16]
        self._lease_id = f"{consumer_id}.{session}"
        self._tag_base = session
        self._keys = Keys.make(self.settings.key_prefix, self._lease_id)
        self._pool = make_pool(url, self.settings, f"taskq:{self._lease_id}")
        self._client = redis.Redis(connection_pool=self._pool)
        self._fetch_script = self._client.register_script(redis_scripts.FETCH)
        self._reap_script = self._client.register_script(redis_scripts.REAP)
        log_errors = partial(self._script_errors, raise_=False)
        self._dlq = DeadLetterList(self._client, self._keys.dlq, self._translate, log_errors)
        self._settler = Settler(
            self._client, self._keys, self._translate, log_errors, self.settings.ack_delay
        )
        self._acks = self._settler.acks
        self._calls = 0  # fetch script calls: part of every tag
        self._unanswered = False  # the last fetch call failed: reuse its tag prefix
        self._landed = False  # a landing list may hold messages no script adopted yet
        self._crash_after_fetch = os.environ.get(CRASH_AFTER_FETCH_ENV) == "1"
        self._rotation = 0  # fetch calls: which queue goes first
        self._sources: dict[tuple[str, ...], dict[str, str]] = {}  # list key -> queue
        self._promoted_at = -math.inf  # monotonic time of the last promotion
        # Monotonic time the earliest delayed message is due. Publishing threads
        # lower it without a lock; a lost update delays promotion by at most 0.5 s.
        self._next_due = -math.inf

    def _translate(self, doing: str) -> AbstractContextManager[None]:
        return translate(self._safe_url, doing)

    # -- publishing -----------------------------------------------------------------

    def declare(self, queues: Sequence[QueueSpec]) -> None:
        """Bind each queue to the direct exchange of the same name, as kombu does.

        Redis lists need no creation; the binding lets a Celery or kombu producer that
        publishes to exchange ``<queue>`` with routing key ``<queue>`` reach the list.
        ``max_priority`` is ignored (Redis always has the four priority lists).
        """
        with self._translate("declare queues"):
            pipe = self._client.pipeline(transaction=False)
            for spec in queues:
                member = PRIORITY_SEP.join([spec.name, "", spec.name])
                pipe.sadd(f"_kombu.binding.{spec.name}", member)
                # kombu >= 5.7 keeps a binding table while this set names the queue.
                pipe.sadd(f"_kombu.binding_permanent.{spec.name}", member)
            pipe.execute()

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
        key, payload = _prepare(envelope, queue, priority)
        with self._translate(f"publish to queue {queue!r}"):
            if eta is not None and eta > time.time():
                member = uuid.uuid4().hex.encode("ascii") + _pack(key, payload)
                self._client.zadd(self._keys.delayed, {member: eta})
                self._next_due = min(self._next_due, time.monotonic() + eta - time.time())
            else:
                self._client.lpush(key, payload)

    def publish_many(self, items: Sequence[tuple[Envelope, str, int | None]]) -> None:
        """One pipeline; messages of one list go in order in multi-value LPUSHes."""
        by_key: dict[str, list[bytes]] = {}
        for envelope, queue, priority in items:
            key, payload = _prepare(envelope, queue, priority)
            by_key.setdefault(key, []).append(payload)
        with self._translate(f"publish {len(items)} messages"):
            pipe = self._client.pipeline(transaction=False)
            for key, payloads in by_key.items():
                for start in range(0, len(payloads), _PUSH_CHUNK):
                    pipe.lpush(key, *payloads[start : start + _PUSH_CHUNK])
            pipe.execute()

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

    def fetch(self, queues: Sequence[str], max_count: int, timeout: float) -> list[Delivery]:
        """Lease up to ``max_count`` messages; see ``Broker.fetch`` and the module doc.

        Raises:
            BrokerError: Redis is unreachable or refused the operation.
            ValueError: no queues, or ``max_count`` below 1.
        """
        if not queues or max_count < 1:
            raise ValueError(f"fetch needs queues and max_count >= 1, got {queues!r}, {max_count}")
        sources = self._sources_of(queues)
        deadline = time.monotonic() + max(timeout, 0.0)
        try:
            keys = list(sources)
            tag_prefix, reply = self._fetch_once(keys, max_count, wait=0.0, block_key=None)
            while not reply[1]:
                wait = self._wait_time(deadline)
                if wait is None:
                    break
                tag_prefix, reply = self._fetch_once(keys, max_count, wait, list_key(queues[0]))
        except redis.RedisError:
            with self._translate(f"fetch from queues {', '.join(queues)}"):
                raise
        return self._deliveries(tag_prefix, reply, sources)

    def _sources_of(self, queues: Sequence[str]) -> dict[str, str]:
        """The lists to pop, in order (list key -> queue): priority steps first, and the
        queues in turn, so that no queue starves the others."""
        start = self._rotation % len(queues)
        self._rotation += 1
        ordered = (*queues[start:], *queues[:start])
        sources = self._sources.get(ordered)
        if sources is None:
            if len(self._sources) > 64:  # callers that pass ever-new queue lists
                self._sources.clear()
            sources = {list_key(q, step): q for step in PRIORITY_STEPS for q in ordered}
            self._sources[ordered] = sources
        return sources

    def _wait_time(self, deadline: float) -> float | None:
        """How long the next BLMOVE may block; None when the fetch timeout is over."""
        now = time.monotonic()
        remaining = deadline - now
        if remaining < 0.001:  # BLMOVE counts in milliseconds and 0 means forever
            return None
        settings = self.settings
        wait = min(remaining, settings.poll_interval, settings.lease_timeout / 4)
        if settings.socket_timeout is not None:
            wait = min(wait, settings.socket_timeout / 2)  # or the read would time out
        wait = min(wait, max(self._next_due - now, 0.0))
        return max(round(wait, 3), 0.001)

    def _fetch_once(
        self, sources: list[str], max_count: int, wait: float, block_key: str | None
    ) -> tuple[str, list[Any]]:
        """Run the fetch script, after blocking up to ``wait`` s on ``block_key`` if set.
        Held acks go with it (before the block).

        Returns the tag prefix and the script's reply.
        """
        if not self._unanswered:
            self._calls += 1
        tag_prefix = f"{self._tag_base}.{self._calls:x}."
        promote = self._promote_due(time.monotonic() + wait)
        adopt = block_key is not None or self._landed
        keys = [
            self._keys.inflight,
            self._keys.consumers,
            self._keys.deliveries,
            self._keys.landings,
            self._keys.delayed,
            *sources,
        ]
        args: list[Any] = [
            self._lease_id,
            self.settings.lease_timeout,
            max_count,
            tag_prefix,
            _PROMOTE_LIMIT if promote else 0,
            1 if adopt else 0,
        ]
        held = self._acks.take()
        try:
            if block_key is None:
                reply = cast(list[Any], self._fetch_script(keys, [*args, *ack_args(held)]))
            else:
                self._landed = True
                reply, acked = self._block_then_fetch(block_key, wait, keys, args, held)
                if not acked:
                    self._acks.put_back(held)
        except BaseException:
            # The script may have run and leased messages under tag_prefix before the
            # reply was lost. The next call reuses the prefix and the script hands them
            # over again (see FETCH), so they are not stranded with this live consumer.
            self._unanswered = True
            self._acks.put_back(held)
            raise
        self._unanswered = False
        if adopt:
            self._landed = False
        _, payloads, _, next_due, seconds, micros, errors = reply
        if payloads and self._crash_after_fetch:
            os._exit(70)  # test hook, see CRASH_AFTER_FETCH_ENV
        if promote:
            self._promoted_at = time.monotonic()
            server_now = int(seconds) + int(micros) / 1e6
            self._next_due = (
                time.monotonic() + float(next_due) - server_now if next_due else math.inf
            )
        if errors:
            self._script_errors("fetch", errors, raise_=not payloads)
        return tag_prefix, reply

    def _block_then_fetch(
        self, block_key: str, wait: float, keys: list[Any], args: list[Any], held: Held
    ) -> tuple[list[Any], bool]:
        """BLMOVE, then the fetch script; return its reply and whether the held acks
        went out."""
        landing = self._keys.landing_prefix + block_key
        # One round trip: the acks, then Redis runs the script as soon as BLMOVE returns.
        pipe = self._client.pipeline(transaction=False)
        acking = pipe_acks(pipe, self._keys, held)
        pipe.hset(self._keys.landings, landing, block_key)  # so a reaper can find it
        blmove: Callable[..., object] = pipe.execute_command  # blmove() types timeout as int
        blmove("BLMOVE", block_key, landing, "RIGHT", "LEFT", wait)
        pipe.evalsha(self._fetch_script.sha, len(keys), *keys, *args, 0)
        # Not raise_on_error: the script runs even when BLMOVE fails, and raising then
        # would strand what it leased in this (live, never reaped) consumer's hash.
        replies = pipe.execute(raise_on_error=False)
        acked = not any(isinstance(r, Exception) for r in replies[:acking])
        _, blocked, reply = replies[acking:]
        if isinstance(reply, NoScriptError):
            # Redis restarted or flushed its scripts. A message BLMOVE took waits in the
            # landing list; the plain call reloads the script and adopts it.
            reply = self._fetch_script(keys, [*args, 0])
        elif isinstance(reply, Exception):
            raise reply
        if isinstance(blocked, Exception):
            if not reply[1]:
                raise blocked
            logger.error("Redis broker could not block on list %r: %s", block_key, blocked)
        return cast(list[Any], reply), acked

    def _promote_due(self, at: float) -> bool:
        return at >= self._next_due or at - self._promoted_at >= _PROMOTE_EVERY

    def _deliveries(
        self, tag_prefix: str, reply: list[Any], queues: dict[str, str]
    ) -> list[Delivery]:
        runs, payloads, reaped_pairs = reply[0], reply[1], reply[2]
        reaped = dict(zip(reaped_pairs[::2], reaped_pairs[1::2], strict=True))
        deliveries: list[Delivery] = []
        n = 0
        for i in range(0, len(runs), 2):
            source = runs[i].decode("utf-8")
            queue = queues.get(source) or queue_of(source)
            for payload in payloads[n : n + int(runs[i + 1])]:
                n += 1
                deliveries.append(
                    Delivery(
                        decode_payload(payload),
                        queue,
                        f"{tag_prefix}{n}",
                        1 + int(reaped[n]) if n in reaped else 1,
                        Lease(source, payload),
                    )
                )
        return deliveries

    def _script_errors(self, doing: str, errors: list[bytes], *, raise_: bool) -> None:
        text = "; ".join(error.decode("utf-8", "replace") for error in errors)
        if raise_:
            raise BrokerError(
                f"Redis at {self._safe_url} refused to {doing}: {text}. A queue key holds "
                "something other than a list; delete or rename it."
            )
        logger.error("Redis broker could not %s some lists: %s", doing, text)

    # -- settling (taskq.broker.redis_settle) ---------------------------------------

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
            self._lease_id,
            self.settings.lease_timeout,
            _REAP_LIMIT,
        ]
        with self._translate("renew the consumer lease"):
            restored, errors = self._reap_script(keys, args)
        if restored:
            logger.info("Returned %d messages of expired consumers to their queues", restored)
        if errors:
            self._script_errors("return messages of expired consumers", errors, raise_=False)
        self._settler.retry_deferred()

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

    def close(self) -> None:
        """Send held acks and deferred settling, then disconnect the pool. Leased
        messages stay leased until the lease runs out."""
        self._settler.close()
        self._pool.disconnect()
