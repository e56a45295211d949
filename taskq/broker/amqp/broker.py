"""Brokers reached through a kombu transport: RabbitMQ (``amqp://``), ``memory://``
and any other URL kombu knows.

Queues are declared as Celery declares them (a direct exchange and a routing key
both named after the queue), so Celery producers and taskq workers share them.
RabbitMQ publishes wait for publisher confirms, so ``publish`` returns only once
the broker has the message; a nack, a connection error or no confirm within
``confirm_timeout`` seconds (option, default 10) raises ``BrokerError``.

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
giving back unstarted messages, the solo pool), they go out at once. A requeue
from the consumer thread also cancels the subscription until the next ``fetch``
and gives back what arrived but was never handed out: otherwise RabbitMQ would
deliver the returned messages straight back to this consumer, which stopped
fetching, and they would wait there until its running tasks finish.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue as queue_mod
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import kombu
from amqp.exceptions import MessageNacked
from kombu.exceptions import OperationalError

from taskq.broker.amqp import delay as amqp_delay
from taskq.broker.base import Broker, DeadLetter, Delivery, Envelope, QueueDepth, QueueSpec
from taskq.errors import BrokerError
from taskq.queues import Queues
from taskq.urls import mask_url

log = logging.getLogger("taskq.broker")

#: Errors that mean "the connection is gone" on every transport; each connection
#: adds its transport's own (``connection_errors`` and ``channel_errors``).
BASE_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, OperationalError)

_ACK, _REQUEUE = "ack", "requeue"
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
        self._transport_options = dict(self.options)
        self._confirms = url.startswith(("amqp", "pyamqp"))
        if self._confirms:
            self._transport_options.setdefault("confirm_publish", True)
        self._specs: dict[str, QueueSpec] = {}
        self._kombu_queues: dict[str, kombu.Queue] = {}
        self._publish_lock = threading.Lock()
        self._publish_conn: kombu.Connection | None = None
        self._producer: kombu.Producer | None = None
        self._consume_conn: kombu.Connection | None = None
        self._consumer: kombu.Consumer | None = None
        self._consuming: tuple[str, ...] = ()
        self._consumer_thread: int | None = None  # the thread that calls fetch
        self._paused = False  # subscription cancelled until the next fetch
        self._generation = 0
        self._buffer: collections.deque[Any] = collections.deque()
        self._pending: queue_mod.SimpleQueue[tuple[str, int, Any]] = queue_mod.SimpleQueue()
        self._unacked = 0
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
        if self._publish_conn is None:
            self._publish_conn = self._connection(publishing=True)
            # A second try at once: kombu's default pause (2 s) would pass the deadline.
            self._publish_conn.ensure_connection(max_retries=1, interval_start=0)
            self._producer = kombu.Producer(self._publish_conn.channel())
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

    # -- publishing ------------------------------------------------------------------

    def publish(
        self,
        envelope: Envelope,
        queue: str,
        *,
        priority: int | None = None,
        eta: float | None = None,
    ) -> None:
        target = self._queue(queue)
        # py-amqp waits for the confirm (confirm_publish); none in time is an error.
        confirm = {"confirm_timeout": self._confirm_timeout} if self._confirms else {}

        def send() -> None:
            self._channel()
            assert self._producer is not None
            exchange, routing_key = target.exchange, target.routing_key
            if self._delay is not None and eta is not None:
                delayed = self._delay.route(self._producer.channel, target, eta, time.time())
                exchange, routing_key = delayed or (exchange, routing_key)
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
                **confirm,
            )

        with self._publish_lock:
            self._guard(send)

    # -- consuming -------------------------------------------------------------------

    def fetch(
        self, queues: Sequence[str], max_count: int, timeout: float, *, read_ahead: bool = False
    ) -> list[Delivery]:
        self._consumer_thread = threading.get_ident()
        try:
            self._ensure_consumer(tuple(queues))
            self._flush()
            self._set_qos(self._unacked + max_count)
            deadline = time.monotonic() + timeout
            assert self._consume_conn is not None
            while not self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    self._consume_conn.drain_events(timeout=min(left, _DRAIN_SLICE))
                self._flush()
        except self._errors as exc:
            self._drop_consumer()
            raise BrokerError(
                f"Lost the connection to {mask_url(self.url)}: {exc!r}. Reconnecting."
            ) from exc
        out: list[Delivery] = []
        while self._buffer and len(out) < max_count:
            out.append(self._delivery(self._buffer.popleft()))
        return out

    def _ensure_consumer(self, queues: tuple[str, ...]) -> None:
        if self._consumer is not None and queues == self._consuming:
            if self._paused:
                self._consumer.consume()
                self._paused = False
            return
        self._drop_consumer()
        conn = self._connection()
        conn.ensure_connection(max_retries=1)
        self._consume_conn = conn
        self._consumer = kombu.Consumer(
            conn.channel(),
            queues=[self._queue(name) for name in queues],
            on_message=self._on_message,  # raw: taskq decodes and checks accept_content itself
        )
        self._consumer.consume()
        self._consuming = queues
        self._paused = False
        self._qos = 0

    def _on_message(self, message: Any) -> None:
        self._buffer.append(message)
        self._unacked += 1

    def _set_qos(self, count: int) -> None:
        if count != self._qos and self._consumer is not None:
            self._consumer.qos(prefetch_count=count)
            self._qos = count

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
        while True:
            try:
                action, generation, message = self._pending.get_nowait()
            except queue_mod.Empty:
                return
            if generation != self._generation:
                continue  # that channel is gone; the broker redelivers the message
            self._unacked -= 1
            if action == _ACK:
                message.ack()
            else:
                message.requeue()

    def _drop_consumer(self) -> None:
        if self._consume_conn is not None:
            with contextlib.suppress(Exception):  # already broken
                self._consume_conn.release()
        self._consume_conn = None
        self._consumer = None
        self._consuming = ()
        self._buffer.clear()
        self._unacked = 0
        self._generation += 1

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            generation, message = d.raw
            self._pending.put((_ACK, generation, message))
        self._flush_if_consumer(pause=False)

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
                    self._buffer.popleft().requeue()
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
        if self._consume_conn is not None:
            try:
                self._flush()
            except self._errors:
                log.warning("could not flush acks on close; the broker will redeliver")
        self._drop_consumer()
        with self._publish_lock:
            self._drop_publisher()


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
