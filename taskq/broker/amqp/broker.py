"""Brokers reached through a kombu transport: RabbitMQ (``amqp://``), ``memory://``
and any other URL kombu knows.

Queues are declared as Celery declares them (a direct exchange and a routing key
both named after the queue), so Celery producers and taskq workers share them.

Publishing on RabbitMQ is always confirmed (publisher confirms; taskq reads them
itself, ``confirms``). The transport option ``publish_confirms`` says what a
publish waits for: ``"wait"`` (the default here; the worker's own publishes)
returns only once the broker confirmed the message, and a nack, a connection
error or no confirm within ``confirm_timeout`` seconds raises ``BrokerError``;
``"pipelined"`` (what ``taskq.broker.connect`` gives producers) returns once the
message is written, keeps it until its confirm, publishes it again on a new
connection if the old one fails first, waits when ``max_unconfirmed`` wait, and
reports a nack as ``MessageRefused`` from the next publish or ``flush``
(docs/reliability.md). The publish frames are written by ``frames``; a batch
(``publish_many``) goes to the socket in one write.

Consuming: the subscription starts with its prefetch window (``basic.qos``
before ``basic.consume``: RabbitMQ never applies a later qos to a running
consumer) and restarts when the window changes much (``_ensure_consumer``).
Deliveries are decoded by ``inbound`` from frames ``reader`` cuts out of large
reads, and settled runs of delivery tags are acked with one ``multiple`` ack
(``acks``).

Dead letters are copies published to the queue ``taskq.dead_letters`` (option
``dead_letter_queue``) with the reason in headers. Listing and requeueing read it
with ``basic_get`` without acknowledging, then close the channel, so RabbitMQ puts
back everything not requeued, in order.

On RabbitMQ, ``publish(eta=...)`` sends a message due later to the delay levels of
``taskq.broker.amqp.delay`` (option ``delayed_delivery``: ``"quorum"``, the default,
``"classic"`` or False), so no worker holds it while it waits.

kombu channels are not thread-safe, so acks and requeues from pool threads are
queued and carried out by the consumer thread inside ``fetch`` (every 50 ms at
most while it waits). Called from the consumer thread itself (a warm shutdown
giving back unstarted messages, the solo pool), requeues go out at once, and so
do ``ack`` calls (``ack_soon`` waits for the next fetch, to batch). A requeue
from the consumer thread also cancels the subscription until the next ``fetch``
and gives back what arrived but was never handed out: otherwise RabbitMQ would
deliver the returned messages straight back to this consumer, which stopped
fetching, and they would wait there until its running tasks finish.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import queue as queue_mod
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import kombu
from amqp.exceptions import MessageNacked
from kombu.exceptions import OperationalError

from taskq.broker.amqp import delay as amqp_delay
from taskq.broker.amqp import frames, inbound, reader
from taskq.broker.amqp.acks import Tags
from taskq.broker.amqp.confirms import Unconfirmed
from taskq.broker.base import Broker, DeadLetter, Delivery, Envelope, QueueDepth, QueueSpec
from taskq.errors import BrokerError, ConfigurationError, MessageRefused
from taskq.queues import Queues
from taskq.urls import mask_url

log = logging.getLogger("taskq.broker")

#: Errors that mean "the connection is gone" on every transport; each connection
#: adds its transport's own (``connection_errors`` and ``channel_errors``).
BASE_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, OperationalError)

_ACK, _REQUEUE = "ack", "requeue"
#: ``publish_confirms``: wait for each confirm, or collect them as they come.
CONFIRM_MODES = ("wait", "pipelined")
#: A pipelined publish reads the confirms that came (and so notices a connection
#: the server closed) unless it is in a burst: the previous read was less than
#: _POLL_GAP seconds ago and this is not the _POLL_EVERY-th publish. A read that
#: finds nothing still costs a system call; the confirms keep meanwhile.
_POLL_EVERY, _POLL_GAP = 16, 0.005
_DRAIN_SLICE = 0.05

DEAD_LETTER_QUEUE = "taskq.dead_letters"
#: Headers ``dead_letter`` adds; ``requeue_dead_letters`` removes them again.
REASON, ORIGIN, DEAD_AT, DEAD_ID = (
    "x-taskq-reason",
    "x-taskq-queue",
    "x-taskq-time",
    "x-taskq-dead-letter-id",
)


class KombuBroker(Broker):
    """A broker on a kombu transport (see module docstring)."""

    supports_delayed = False

    def __init__(
        self,
        url: str,
        *,
        consumer_id: str,
        options: dict[str, Any] | None = None,
        queues: Queues | None = None,
    ):
        super().__init__(url, consumer_id=consumer_id, options=options, queues=queues)
        # A publish attempt (a connect tried twice, a reply or the confirm) takes at
        # most half of broker_publish_timeout, so delay() ends within it (producer).
        self.publish_timeout = float(self.options.pop("publish_timeout", None) or 5.0)
        quarter = self.publish_timeout / 4
        connect = float(self.options.pop("connect_timeout", None) or 4.0)
        self._connect_timeout = min(connect, quarter / 2)
        self._confirm_timeout = float(self.options.pop("confirm_timeout", None) or quarter)
        self._reply_timeout = quarter  # a publishing connection's reads and writes
        self.dead_letter_queue = str(self.options.pop("dead_letter_queue", DEAD_LETTER_QUEUE))
        self.options.pop("lease_timeout", None)
        # RabbitMQ keeps ETA messages in its delay levels (see taskq.broker.amqp.delay).
        self._delay = amqp_delay.for_url(url, self.options.pop("delayed_delivery", "quorum"))
        self.supports_delayed = self._delay is not None
        mode = str(self.options.pop("publish_confirms", None) or "wait")
        if mode not in CONFIRM_MODES:
            raise ConfigurationError(
                f"Unknown publish_confirms {mode!r} in broker_transport_options: use "
                "'wait' (each publish waits for its confirm) or 'pipelined' (see "
                "docs/reliability.md)."
            )
        self._max_unconfirmed = max(1, int(self.options.pop("max_unconfirmed", None) or 2000))
        self._polled = 0.0  # when a pipelined publish last read the confirms
        # taskq reads the confirms itself (``confirms``): py-amqp's own waits for each.
        self.options.pop("confirm_publish", None)
        self._transport_options = dict(self.options)
        self._confirms = url.startswith(("amqp", "pyamqp"))
        self._pipelined = self._confirms and mode == "pipelined"
        self._unconfirmed = Unconfirmed()
        self._resend: collections.deque[tuple[Envelope, str, int | None, float | None]] = (
            collections.deque()
        )
        if self._pipelined:  # what is still unconfirmed at exit gets its chance
            atexit.register(_flush_at_exit, weakref.ref(self), os.getpid())
        self._specs: dict[str, QueueSpec] = {}
        self._kombu_queues: dict[str, kombu.Queue] = {}
        self._publish_lock = threading.Lock()
        self._publish_conn: kombu.Connection | None = None
        self._declared: set[str] = set()  # queues declared on the publishing connection
        self._producer: kombu.Producer | None = None
        self._consume_conn: kombu.Connection | None = None
        self._consumer: kombu.Consumer | None = None
        self._consuming: tuple[str, ...] = ()
        self._consumer_thread: int | None = None  # the thread that calls fetch
        self._paused = False  # subscription cancelled until the next fetch
        self._idle = False  # the last fetch returned nothing
        self._generation = 0
        self._buffer: collections.deque[Any] = collections.deque()
        self._pending: queue_mod.SimpleQueue[tuple[str, int, Any]] = queue_mod.SimpleQueue()
        self._unacked = 0
        self._tags = Tags()
        self._qos = 0
        probe = kombu.Connection(url)
        # Recoverable errors include py-amqp's MessageNacked (a negative publisher confirm).
        self._errors = (
            BASE_CONNECTION_ERRORS
            + tuple(probe.connection_errors)
            + tuple(probe.channel_errors)
            + tuple(probe.recoverable_connection_errors)
        )

    # -- queues ----------------------------------------------------------------------

    def _queue(self, name: str) -> kombu.Queue:
        """The kombu queue that declares ``name``: as the worker declared it, else as
        the app's queue table says (the same in every process)."""
        queue = self._kombu_queues.get(name)
        if queue is None:
            spec = self._specs.get(name)
            if spec is None:
                # The dead-letter queue is taskq's own: plain, whatever the settings say.
                plain = name == self.dead_letter_queue
                spec = self._specs[name] = QueueSpec(name) if plain else self.queues[name]
            queue = self._kombu_queues[name] = spec.to_kombu()
        return queue

    def declare(self, queues: Sequence[QueueSpec]) -> None:
        for spec in queues:
            self._specs[spec.name] = spec
            self._kombu_queues.pop(spec.name, None)

        def declare_all() -> None:
            for spec in queues:
                self._queue(spec.name)(self._channel()).declare()
                if self._delay is not None:  # where its delayed messages come out
                    self._delay.bind(self._channel(), self._queue(spec.name))

        with self._publish_lock:
            self._guard(declare_all)

    def _connection(self, publishing: bool = False) -> kombu.Connection:
        options = self._transport_options
        if publishing and self._confirms:
            # py-amqp waits forever for a reply (a queue.declare-ok) unless told.
            timeouts = {"read_timeout": self._reply_timeout, "write_timeout": self._reply_timeout}
            options = {**timeouts, **options}
        return kombu.Connection(
            self.url, connect_timeout=self._connect_timeout, transport_options=options
        )

    def _channel(self) -> Any:
        """The publishing channel, connected (and in confirm mode) on first use. A new
        connection first publishes again what the last one left unconfirmed."""
        if self._publish_conn is None:
            conn = self._connection(publishing=True)
            # A second try at once: kombu's default pause (2 s) would pass the deadline.
            conn.ensure_connection(max_retries=1, interval_start=0)
            channel = conn.channel()
            if self._confirms:
                reader.buffer_reads(conn.connection)
                channel.confirm_select()
                channel.events["basic_ack"].add(self._unconfirmed.on_ack)
                channel.events["basic_nack"].add(self._unconfirmed.on_nack)
            self._publish_conn = conn
            self._producer = kombu.Producer(channel)
            self._declared = set()
            while self._resend:
                self._write(self._resend[0])
                self._resend.popleft()  # only once written: a failure keeps it
        assert self._producer is not None
        return self._producer.channel

    def _guard(self, action: Any) -> Any:
        """Run ``action`` (publish side); on a connection error drop the connection and
        raise ``BrokerError`` (the producer's retry policy decides what next)."""
        try:
            return action()
        except self._errors as exc:
            self._drop_publisher()
            if isinstance(exc, MessageNacked):
                raise BrokerError(
                    f"Broker {mask_url(self.url)} refused the message (negative publisher "
                    "confirm): the queue may be full with overflow=reject-publish, or the "
                    "broker failed to store it. Check the queue's limits and policies."
                ) from exc
            if "SSL" in str(exc):
                raise BrokerError(
                    f"Broker {mask_url(self.url)}: the TLS handshake failed ({exc!r}). The URL "
                    "asks for TLS (amqps:// or ssl=...) and the port speaks plain AMQP, or the "
                    "certificate options do not match the server's: check both."
                ) from exc
            if "timed out" in str(exc):
                raise BrokerError(
                    f"Broker {mask_url(self.url)} did not answer in time ({exc!r}): it accepts "
                    "connections but says nothing. Is that port RabbitMQ's, and does the URL "
                    "match its TLS setting (amqps:// for a TLS port, amqp:// for a plain one)?"
                ) from exc
            raise BrokerError(
                f"Broker {mask_url(self.url)} failed: {exc!r}. Is it running and reachable?"
            ) from exc

    def _drop_publisher(self) -> None:
        if self._publish_conn is not None:
            with contextlib.suppress(Exception):  # already broken; nothing more to release
                self._publish_conn.release()
        self._publish_conn = None
        self._producer = None
        lost = self._unconfirmed.reset()
        if self._pipelined:  # published again, first thing, on the next connection
            self._resend.extend(lost)
        # Waiting for each confirm: the caller saw this publish fail and decides.

    # -- publishing ------------------------------------------------------------------

    def publish(
        self,
        envelope: Envelope,
        queue: str,
        *,
        priority: int | None = None,
        eta: float | None = None,
    ) -> None:
        item = (envelope, queue, priority, eta)
        with self._publish_lock:
            self._guard(lambda: self._publish(item))

    def publish_many(self, items: Sequence[tuple[Envelope, str, int | None]]) -> None:
        """Publish every item with one write; on RabbitMQ, then wait once for all their
        confirms (one round trip for the batch: stored when this returns), or, with
        ``publish_confirms="pipelined"``, read those that came and return, as
        ``publish`` does."""
        if not self._confirms:  # memory:// and the like: one at a time
            super().publish_many(items)
            return
        with self._publish_lock:
            self._guard(lambda: self._publish_all(items))

    def _publish_all(self, items: Sequence[tuple[Envelope, str, int | None]]) -> None:
        self._raise_refused()
        self._channel()
        batch: list[bytes] | None = [] if self._confirms else None
        first = self._unconfirmed.next_seq
        try:
            for envelope, queue, priority in items:
                if self._confirms and len(self._unconfirmed) >= self._max_unconfirmed:
                    self._send(batch)
                    self._collect(until=lambda: len(self._unconfirmed) < self._max_unconfirmed)
                self._write((envelope, queue, priority, None), batch)
            if self._confirms:
                self._send(batch)
                if self._pipelined:  # as publish: the confirms are read as they come
                    self._collect(until=None)
                else:
                    self._collect(until=lambda: len(self._unconfirmed) == 0)
        except BaseException:
            # The caller sends the whole batch again (BrokerError and its retry policy).
            self._unconfirmed.forget_from(first)
            raise
        self._raise_refused()

    def _send(self, batch: list[bytes] | None) -> None:
        """Write a batch of frames in one go (one system call for many messages)."""
        if batch:
            assert self._publish_conn is not None
            self._publish_conn.connection.transport.write(b"".join(batch))
            batch.clear()

    def _publish(self, item: tuple[Envelope, str, int | None, float | None]) -> None:
        self._raise_refused()
        self._channel()
        if not self._confirms:
            self._write(item)
            return
        if len(self._unconfirmed) >= self._max_unconfirmed:
            self._collect(until=lambda: len(self._unconfirmed) < self._max_unconfirmed)
        seq = self._write(item)
        if not self._pipelined:
            self._collect(until=lambda: not self._unconfirmed.waiting_for(seq))
            self._raise_refused()
            return
        now = time.monotonic()
        if seq % _POLL_EVERY and now - self._polled < _POLL_GAP:
            return  # in a burst of publishes: read the confirms at the 16th
        self._polled = now
        try:  # read the confirms that came, without waiting for any
            self._collect(until=None)
        except self._errors as exc:
            # This message is written and kept: a new connection publishes it again, now
            # or, failing that, first thing in the next publish or flush.
            log.warning("Publishing connection lost after a publish (%r); reconnecting", exc)
            self._drop_publisher()
            try:
                self._channel()
                self._collect(until=None)
            except self._errors as again:
                log.warning("Could not reconnect yet (%r); %d kept", again, self.unconfirmed)
                self._drop_publisher()

    def _write(
        self,
        item: tuple[Envelope, str, int | None, float | None],
        batch: list[bytes] | None = None,
    ) -> int:
        """Publish one message on the channel (no waiting); its confirm number. With
        ``batch`` (RabbitMQ), its frames are added there for the caller to send."""
        envelope, queue, priority, eta = item
        target = self._queue(queue)
        assert self._producer is not None
        exchange, routing_key = target.exchange, target.routing_key
        if self._delay is not None and eta is not None:
            delayed = self._delay.route(self._producer.channel, target, eta, time.time())
            exchange, routing_key = delayed or (exchange, routing_key)
        if self._confirms:
            # The frames written here, not through kombu's Producer.publish or py-amqp's
            # serializer: together four fifths of a publish's cost (``frames``).
            channel = self._producer.channel
            if queue not in self._declared:
                target(channel).declare()
                self._declared.add(queue)
            properties = envelope.properties
            data = frames.publish(
                channel.channel_id,
                _name(exchange),
                routing_key,
                envelope.body,
                {
                    "content_type": envelope.content_type,
                    "content_encoding": envelope.content_encoding,
                    "application_headers": envelope.headers,
                    "delivery_mode": 2,
                    "priority": priority,
                    "correlation_id": properties.get("correlation_id"),
                    "reply_to": properties.get("reply_to"),
                },
                channel.connection.frame_max,
            )
            if batch is None:
                channel.connection.transport.write(data)
            else:
                batch.append(data)
            return self._unconfirmed.sent(item)
        self._producer.publish(
            envelope.body,
            exchange=exchange,
            routing_key=routing_key,
            headers=envelope.headers,
            content_type=envelope.content_type,
            content_encoding=envelope.content_encoding,
            priority=priority,
            correlation_id=envelope.properties.get("correlation_id"),
            reply_to=envelope.properties.get("reply_to"),
            delivery_mode=2,
            declare=[target],
            retry=False,
        )
        return 0

    def _collect(self, until: Any) -> None:
        """Read confirms: those already here (``until`` None), or until ``until()`` is
        true. ``confirm_timeout`` seconds without a confirm while messages wait is a
        connection error (``Unconfirmed.stalled_since``)."""
        assert self._publish_conn is not None
        conn = self._publish_conn.connection
        if until is None:
            while True:
                try:
                    conn.drain_events(timeout=0)
                except TimeoutError:
                    break
            self._check_stalled()
            return
        while not until():
            since = self._unconfirmed.stalled_since() or time.monotonic()
            left = since + self._confirm_timeout - time.monotonic()
            if left <= 0:
                self._check_stalled()
                left = 0.001
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=left)

    def _check_stalled(self) -> None:
        since = self._unconfirmed.stalled_since()
        if since is not None and time.monotonic() - since > self._confirm_timeout:
            raise TimeoutError(f"no publisher confirm for {self._confirm_timeout:g} s")

    def _raise_refused(self) -> None:
        refused = self._unconfirmed.refused
        if not refused:
            return
        ids = [str(item[0].headers.get("id")) for item in refused]
        refused.clear()
        message = (
            f"Broker {mask_url(self.url)} refused {len(ids)} message(s) (negative publisher "
            f"confirm): {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}. The queue may "
            "be full with overflow=reject-publish, or the broker failed to store them. Check "
            "the queue's limits and policies."
        )
        if self._pipelined:
            raise MessageRefused(message + " (Sent by earlier calls; this call sent nothing.)")
        raise MessageNacked(message)

    def flush(self) -> None:
        """Wait until every message published so far is confirmed (re-sending, on a new
        connection, what a lost one left unconfirmed).

        Raises:
            MessageRefused: the broker refused some of them (nothing to retry).
            BrokerError: the broker could not be reached, or confirmed nothing for
                ``confirm_timeout`` seconds; the messages stay kept for the next try.
        """
        if not self._confirms:
            return
        with self._publish_lock:
            if not (self._unconfirmed or self._resend or self._unconfirmed.refused):
                return

            def wait() -> None:
                self._raise_refused()
                self._channel()
                self._collect(until=lambda: len(self._unconfirmed) == 0)
                self._raise_refused()

            self._guard(wait)

    @property
    def unconfirmed(self) -> int:
        """Messages published and not confirmed yet (or waiting to be sent again)."""
        return len(self._unconfirmed) + len(self._resend)

    # -- consuming -------------------------------------------------------------------

    def fetch(
        self, queues: Sequence[str], max_count: int, timeout: float, *, read_ahead: bool = False
    ) -> list[Delivery]:
        self._consumer_thread = threading.get_ident()
        try:
            # Settle now unless deliveries are waiting here and few acks are: each ack
            # frame is a write that wakes RabbitMQ, and the credit comes back soon
            # enough (a quarter of the prefetch). Acks wait at most until the buffer
            # runs dry, a fetch later at the latest with a backlog of short tasks.
            if not self._buffer or self._pending.qsize() >= max(1, self._qos // 4):
                self._flush()
            # The window: what the caller holds, what it asks for, and, when it allows
            # reading ahead, as much again (the Redis broker's bound too).
            held = self._unacked - len(self._buffer)
            self._ensure_consumer(tuple(queues), held + max_count * (2 if read_ahead else 1))
            deadline = time.monotonic() + timeout
            assert self._consume_conn is not None
            drain = self._consume_conn.drain_events
            while not self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    drain(timeout=min(left, _DRAIN_SLICE))
                self._flush()
            # Then whatever else has arrived already, without waiting.
            if self._buffer:
                buffer = self._buffer
                if self._confirms:
                    reader.drain_ready(
                        self._consume_conn.connection, lambda: len(buffer) < max_count
                    )
                else:
                    with contextlib.suppress(TimeoutError):
                        while len(buffer) < max_count:
                            drain(timeout=0)
        except self._errors as exc:
            self._drop_consumer()
            raise BrokerError(
                f"Lost the connection to {mask_url(self.url)}: {exc!r}. Reconnecting."
            ) from exc
        out: list[Delivery] = []
        while self._buffer and len(out) < max_count:
            out.append(self._delivery(self._buffer.popleft()))
        self._idle = not out
        return out

    def _ensure_consumer(self, queues: tuple[str, ...], window: int) -> None:
        """Consume ``queues`` with a prefetch of at least ``window``.

        RabbitMQ applies a consumer's prefetch (``basic.qos``, per consumer) when
        the consumer starts and never changes it after, so a window that grew, or
        fell to a quarter, restarts the subscription: cancel, ``basic.qos``, then
        ``basic.consume``. The prefetch is the window rounded up to a power of two
        (and shrinks only after a fetch that found nothing),
        so a worker ramping up restarts a handful of times, not at every fetch.
        What was delivered before stays delivered (and unacked) on the channel.
        """
        window = max(1, window)
        consumer = self._consumer
        if consumer is not None and queues == self._consuming:
            # Shrink only once a fetch found nothing: a fetch that got fewer than it
            # asked for means little here (deliveries arrive as they are pushed), and
            # restarting on it made a draining worker restart every few fetches.
            resize = window > self._qos or (self._idle and window * 4 <= self._qos)
            if not (self._paused or resize):
                return
            if not self._paused:
                consumer.cancel()
            if resize:
                self._qos = _rounded(window)
            consumer.qos(prefetch_count=self._qos)
            consumer.consume()
            self._paused = False
            return
        self._drop_consumer()
        conn = self._connection()
        conn.ensure_connection(max_retries=1)
        if self._confirms:
            reader.buffer_reads(conn.connection)
        self._consume_conn = conn
        channel = conn.channel()
        if self._confirms:  # deliveries decoded here, not by py-amqp and kombu (inbound)
            inbound.take_deliveries(conn.connection, channel.channel_id, self._on_message)
        consumer = self._consumer = kombu.Consumer(
            channel,
            queues=[self._queue(name) for name in queues],
            on_message=self._on_message,  # raw: taskq decodes and checks accept_content itself
        )
        self._qos = _rounded(window)
        consumer.qos(prefetch_count=self._qos)  # before consuming: see the docstring
        consumer.consume()
        self._consuming = queues
        self._paused = False

    def _on_message(self, message: Any) -> None:
        self._buffer.append(message)
        self._unacked += 1
        if self._confirms:
            self._tags.delivered(message.delivery_tag)

    def _delivery(self, message: Any) -> Delivery:
        info = message.delivery_info or {}  # a delayed message's queue is in its key
        queue, headers = amqp_delay.unwrap(self._delay, info, dict(message.headers or {}))
        redelivered = bool(info.get("redelivered"))
        count = (
            int(headers.get("x-delivery-count") or 0) + 1
            if "x-delivery-count" in headers
            else (2 if redelivered else 1)
        )
        envelope = Envelope(
            body=message.body if isinstance(message.body, bytes) else str(message.body).encode(),
            content_type=message.content_type or "application/json",
            content_encoding=message.content_encoding or "utf-8",
            headers=headers,
            properties=dict(message.properties or {}),
        )
        return Delivery(
            envelope, queue, str(message.delivery_tag), count, raw=(self._generation, message)
        )

    def _flush(self) -> None:
        """Send the acks and requeues the pool reported: on RabbitMQ, requeues one by
        one, then one ``multiple`` ack for the settled run of delivery tags and single
        acks past it (``acks.Tags``)."""
        pending = self._pending
        if pending.empty():
            return
        amqp = self._confirms and self._consumer is not None
        while True:
            try:
                action, generation, message = pending.get_nowait()
            except queue_mod.Empty:
                break
            if generation != self._generation:
                continue  # that channel is gone; the broker redelivers the message
            self._unacked -= 1
            if not amqp:
                message.ack() if action == _ACK else message.requeue()
            elif action == _ACK:
                self._tags.ack(message.delivery_tag)
            else:
                self._give_back(message)
        if amqp:
            assert self._consumer is not None
            high, singles = self._tags.take()
            channel = self._consumer.channel
            if high is not None:
                channel.basic_ack(high, multiple=True)
            for tag in singles:
                channel.basic_ack(tag)

    def _give_back(self, message: Any) -> None:
        """Requeue one delivery at once (``basic.reject`` with requeue on RabbitMQ)."""
        if not self._confirms:
            message.requeue()
            return
        assert self._consumer is not None
        self._consumer.channel.basic_reject(message.delivery_tag, requeue=True)
        self._tags.rejected(message.delivery_tag)

    def _drop_consumer(self) -> None:
        if self._consume_conn is not None:
            with contextlib.suppress(Exception):  # already broken
                self._consume_conn.release()
        self._consume_conn = None
        self._consumer = None
        self._consuming = ()
        self._buffer.clear()
        self._unacked = 0
        self._tags = Tags()
        self._generation += 1

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            generation, message = d.raw
            self._pending.put((_ACK, generation, message))
        self._flush_if_consumer(pause=False)

    def ack_soon(self, deliveries: Sequence[Delivery]) -> None:
        """Queue the acks for the consumer thread's next flush (at the next fetch, or
        within 50 ms while it waits), where a run of them goes out as one frame."""
        for d in deliveries:
            generation, message = d.raw
            self._pending.put((_ACK, generation, message))

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            generation, message = d.raw
            self._pending.put((_REQUEUE, generation, message))
        self._flush_if_consumer(pause=True)

    def _flush_if_consumer(self, *, pause: bool) -> None:
        """Settle now when called from the consumer thread (see the module doc)."""
        if threading.get_ident() != self._consumer_thread or self._consume_conn is None:
            return
        try:
            if pause and self._consumer is not None and not self._paused:
                self._consumer.cancel()
                self._paused = True
                while self._buffer:  # arrived, never handed out
                    self._give_back(self._buffer.popleft())
                    self._unacked -= 1
            self._flush()
        except self._errors as exc:
            # The channel is gone: RabbitMQ gives its unacked messages back by itself.
            log.warning("Could not settle messages (%r); the broker will redeliver them", exc)
            self._drop_consumer()

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Publish a copy to the dead-letter queue with the reason (confirmed), then ack."""
        env = delivery.envelope
        headers = {
            **env.headers,
            REASON: reason,
            ORIGIN: delivery.queue,
            DEAD_AT: time.time(),
            DEAD_ID: uuid.uuid4().hex,
        }
        self.publish(
            Envelope(env.body, env.content_type, env.content_encoding, headers, env.properties),
            self.dead_letter_queue,
        )
        self.flush()  # stored before the original goes
        self.ack([delivery])

    # -- dead letters ----------------------------------------------------------------

    @contextlib.contextmanager
    def _browse(self) -> Iterator[Iterator[Any]]:
        """Yield the parked messages one by one, unacknowledged, on a connection of
        their own; what the caller did not ack is given back when the block ends.

        Only the messages parked when browsing began are yielded: a message a running
        worker dead-letters again while ``requeue_dead_letters`` runs waits for the
        next call instead of bouncing between its queue and here for as long as the
        loop would go on (issue 12: 59 times in one ``requeue --all``)."""
        conn = self._connection()
        taken: list[Any] = []
        try:
            conn.ensure_connection(max_retries=1)
            queue = self._queue(self.dead_letter_queue)(conn.channel())
            queue.declare()
            waiting = int(queue.queue_declare(passive=True).message_count)

            def messages() -> Iterator[Any]:
                for _ in range(waiting):
                    message = queue.get(no_ack=False)
                    if message is None:
                        return
                    taken.append(message)
                    yield message

            yield messages()
        except self._errors as exc:
            raise BrokerError(
                f"Could not read the dead-letter queue {self.dead_letter_queue!r} on "
                f"{mask_url(self.url)}: {exc!r}. Is the broker running and reachable?"
            ) from exc
        finally:
            # Given back explicitly: closing the channel does it on RabbitMQ, but
            # kombu's in-memory transport drops unacknowledged messages instead.
            for message in taken:
                if not message.acknowledged:
                    with contextlib.suppress(Exception):  # closing gives them back too
                        message.requeue()
            with contextlib.suppress(Exception):
                conn.release()

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Parked messages, oldest first (read without removing them)."""
        out: list[DeadLetter] = []
        if limit < 1:
            return out
        with self._browse() as messages:
            for message in messages:
                out.append(_dead_letter(message))
                if len(out) >= limit:
                    break
        return out

    def requeue_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        """Publish parked messages (all when ``ids`` is None) back to the queue they
        were dead-lettered from, without the dead-letter headers. Each leaves the
        dead-letter queue only once its republish is confirmed."""
        wanted = None if ids is None else set(ids)
        moved = 0
        with self._browse() as messages:
            for message in messages:
                parked = _dead_letter(message)
                if wanted is not None and parked.id not in wanted:
                    continue
                if not parked.queue:
                    log.warning("Dead letter %s names no queue; left in place", parked.id)
                    continue
                env = parked.envelope
                drop = (REASON, ORIGIN, DEAD_AT, DEAD_ID)
                headers = {k: v for k, v in env.headers.items() if k not in drop}
                original = Envelope(
                    env.body, env.content_type, env.content_encoding, headers, env.properties
                )
                self.publish(original, parked.queue, priority=env.properties.get("priority"))
                self.flush()  # stored before the parked copy goes
                message.ack()
                moved += 1
                if wanted is not None:
                    wanted.discard(parked.id)
                    if not wanted:
                        break
        return moved

    def queue_depths(self, queues: Sequence[str]) -> dict[str, QueueDepth]:
        """Ready counts from a passive ``queue.declare`` of each queue (0 for one not
        declared yet). Delayed and dead-lettered messages are not counted per queue:
        the delay levels and the dead-letter queue hold every queue's messages mixed,
        and only reading them all would tell them apart (``dead_letter_count`` gives
        the dead-letter queue's total)."""
        conn = self._connection()
        out: dict[str, QueueDepth] = {}
        try:
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()
            for name in queues:
                try:
                    count = channel.queue_declare(name, passive=True).message_count
                except conn.channel_errors:  # NOT_FOUND closes the channel
                    count, channel = 0, conn.channel()
                out[name] = QueueDepth(ready=int(count))
        except self._errors as exc:
            raise BrokerError(
                f"Could not count the queues on {mask_url(self.url)}: {exc!r}. "
                "Is the broker running and reachable?"
            ) from exc
        finally:
            with contextlib.suppress(Exception):
                conn.release()
        return out

    def dead_letter_count(self) -> int:
        """How many messages the dead-letter queue holds, all queues together."""
        return self.queue_depths([self.dead_letter_queue])[self.dead_letter_queue].ready

    def purge_dead_letters(self) -> int:
        """Delete every parked message; return how many."""
        return self.purge(self.dead_letter_queue)

    def purge(self, queue: str) -> int:
        with self._publish_lock:
            count = self._guard(lambda: self._queue(queue)(self._channel()).purge())
        return int(count or 0)

    def close(self) -> None:
        if self.unconfirmed or self._unconfirmed.refused:
            try:
                self.flush()
            except BrokerError as exc:
                log.error("Closing with %d message(s) unconfirmed: %s", self.unconfirmed, exc)
        if self._consume_conn is not None:
            try:
                self._flush()
            except self._errors:
                log.warning("could not flush acks on close; the broker will redeliver")
        self._drop_consumer()
        with self._publish_lock:
            self._drop_publisher()


def _rounded(window: int) -> int:
    """``window`` rounded up to a power of two: the consumer prefetch for it."""
    return 1 << max(0, window - 1).bit_length()


def _name(exchange: Any) -> str:
    """An exchange's name (kombu gives an ``Exchange`` or a name)."""
    return str(getattr(exchange, "name", exchange) or "")


def _dead_letter(message: Any) -> DeadLetter:
    """A message read from the dead-letter queue, as the ``Broker`` API describes it."""
    headers = dict(message.headers or {})
    properties = dict(message.properties or {})
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    try:
        when = float(headers.get(DEAD_AT) or 0.0)
    except (TypeError, ValueError):
        when = 0.0
    return DeadLetter(
        # A message parked by something other than taskq: its task id, if any.
        id=str(headers.get(DEAD_ID) or headers.get("id") or ""),
        queue=str(headers.get(ORIGIN) or ""),
        reason=str(headers.get(REASON) or ""),
        envelope=Envelope(
            body,
            message.content_type or "application/json",
            message.content_encoding or "utf-8",
            headers,
            {
                k: v
                for k, v in properties.items()
                if k in ("correlation_id", "reply_to", "priority")
            },
        ),
        time=when,
    )


def _flush_at_exit(ref: weakref.ref[KombuBroker], pid: int) -> None:
    """At interpreter exit, wait for the confirms of a pipelined broker still open,
    in the process that opened it (a forked child inherits the hook and the socket,
    but the confirms on it are its parent's)."""
    broker = ref()
    if broker is None or os.getpid() != pid:
        return
    if not (broker.unconfirmed or broker._unconfirmed.refused):
        return
    try:
        broker.flush()
    except BrokerError as exc:
        log.error("Exiting with %d message(s) unconfirmed: %s", broker.unconfirmed, exc)
