"""Reading the event stream: what ``taskq events``, the tests and a dashboard use.

``EventReceiver`` binds a queue of its own (``celeryev.<uuid>``: auto-deleted,
messages kept ``queue_ttl`` seconds, the queue itself ``queue_expires`` seconds
after its consumer leaves, as Celery's receivers do) to the events exchange with
routing key ``#`` and calls ``handler`` with each event, lists unpacked, in the
order they arrived. Before handing an event on it does what Celery's receiver
does: moves the receiver's Lamport clock forward past the event's (a
``task-sent`` from a client, whose clock means nothing, gets the receiver's),
converts ``timestamp`` to this host's time using the sender's ``utcoffset``, and
adds ``local_received``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import kombu
import orjson
from kombu.clocks import LamportClock

from taskq.events import event as ev

log = logging.getLogger("taskq.events")

#: A receiver's clock for ``task-sent`` events: one behind its own (Celery's choice).
CLIENT_CLOCK_SKEW = -1

Handler = Callable[[dict[str, Any]], object]


class EventReceiver:
    """Calls ``handler`` with every event published on the broker (see module docstring).

    Args:
        connection: makes the kombu connection to consume on.
        handler: called with each event (a dict), on the thread running ``run``.
        clock: this receiver's Lamport clock.
        routing_key: which events: ``#`` for all, ``task.#``, ``worker.#``.
        queue_prefix: the queue's name is ``<prefix>.<uuid>``.
        queue_ttl: seconds an event waits in the queue before it is discarded.
        queue_expires: seconds the queue outlives its consumer.
        exchange_name: the events exchange (Celery's ``event_exchange``).
        wakeup: called once consuming has started (e.g. to ask workers for a
            heartbeat at once, as Celery's receiver does).
    """

    def __init__(
        self,
        connection: Callable[[], kombu.Connection],
        handler: Handler,
        *,
        clock: LamportClock | None = None,
        routing_key: str = "#",
        queue_prefix: str = "celeryev",
        queue_ttl: float = 5.0,
        queue_expires: float = 60.0,
        exchange_name: str = ev.EXCHANGE_NAME,
        wakeup: Callable[[], object] | None = None,
    ) -> None:
        self.handler = handler
        self.clock = clock or LamportClock()
        self.ready = threading.Event()
        self._connect = connection
        self._routing_key = routing_key
        self._queue_name = f"{queue_prefix}.{uuid.uuid4()}"
        self._ttl, self._expires = queue_ttl, queue_expires
        self._exchange_name = exchange_name
        self._wakeup = wakeup

    def run(self, stop: threading.Event, poll: float = 0.5) -> None:
        """Consume until ``stop`` is set, reconnecting after broker errors."""
        pause = 0.2
        errors: tuple[type[BaseException], ...] = (OSError, *_recoverable())
        while not stop.is_set():
            try:
                self._consume(stop, poll)
                return
            except errors as exc:
                self.ready.clear()
                log.warning("Events: connection lost (%s); reconnecting in %.1fs", exc, pause)
                stop.wait(pause)
                pause = min(pause * 2, 5.0)

    def _consume(self, stop: threading.Event, poll: float) -> None:
        with self._connect() as conn:
            conn.ensure_connection(max_retries=1)
            exchange = ev.exchange(conn.transport.driver_type, self._exchange_name)
            queue = kombu.Queue(
                self._queue_name,
                exchange=exchange,
                routing_key=self._routing_key,
                auto_delete=True,
                durable=False,
                message_ttl=self._ttl,
                expires=self._expires,
            )
            with kombu.Consumer(
                conn.channel(), queues=[queue], on_message=self._on_message, no_ack=True
            ):
                # On Redis the subscription is made by the first drain: only after it
                # is an event published elsewhere sure to reach this queue.
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.01)
                self.ready.set()
                if self._wakeup is not None:
                    try:
                        self._wakeup()
                    except Exception as exc:  # a wake-up is a courtesy, not a need
                        log.debug("Events: could not wake workers: %r", exc)
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        conn.drain_events(timeout=poll)

    def _on_message(self, message: Any) -> None:
        # orjson reads a busy fleet's event lists several times faster than kombu's
        # json; anything that is not JSON is not an event.
        if message.content_type != "application/json":
            log.debug("Events: ignored a %s message", message.content_type)
            return
        try:
            body = orjson.loads(message.body)
        except orjson.JSONDecodeError as exc:
            log.debug("Events: ignored an unreadable message: %s", exc)
            return
        self._receive(body, message)

    def _receive(self, body: Any, message: Any) -> None:
        here, now = ev.utcoffset(), time.time()  # once a message: a list may hold hundreds
        for item in body if isinstance(body, list) else [body]:
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                self.handler(self.normalize(item, here, now))
            else:
                log.debug("Events: ignored a message that is not an event: %r", item)

    def normalize(
        self, event: dict[str, Any], here: int | None = None, now: float | None = None
    ) -> dict[str, Any]:
        """Celery's ``event_from_message``: the clock, the local timestamp, the time
        it was received (``here``: this host's utcoffset; ``now``: the time)."""
        if event["type"] == "task-sent":
            event["clock"] = (self.clock.value or 1) + CLIENT_CLOCK_SKEW
            self.clock.adjust(event["clock"])
        elif isinstance(event.get("clock"), int):
            self.clock.adjust(event["clock"])
        else:
            event["clock"] = self.clock.forward()
        offset, timestamp = event.get("utcoffset"), event.get("timestamp")
        if isinstance(offset, (int, float)) and isinstance(timestamp, (int, float)):
            local = ev.utcoffset() if here is None else here
            event["timestamp"] = timestamp - (int(offset) - local) * 3600
        event["local_received"] = time.time() if now is None else now
        return event


def _recoverable() -> tuple[type[BaseException], ...]:
    """Connection errors of every transport kombu knows (so a lost broker reconnects)."""
    from kombu.exceptions import OperationalError

    errors: list[type[BaseException]] = [OperationalError, ConnectionError]
    try:
        import redis.exceptions

        errors.append(redis.exceptions.ConnectionError)
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    import amqp.exceptions

    errors.append(amqp.exceptions.ConnectionError)
    return tuple(errors)
