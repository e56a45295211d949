"""Sending events without ever slowing the code that reports them.

``EventDispatcher.send`` stamps the event with the time and appends it to a
bounded buffer: no I/O, no lock on the common path. A background thread takes
what accumulated, adds the sender's clock, host name and pid, and publishes it:
worker events one message each, task events as one JSON list under
``task.multi`` (Celery's buffered form; a lone task event goes under its own
routing key). While the broker is slow or down the buffer fills; past
``buffer_limit`` events are dropped and counted (``dropped``), and a batch the
broker refused is dropped and counted too, so a task never waits for its events.
The thread reconnects with a growing pause. Publishes are at least ``FLUSH_GAP``
apart, so under load one message carries many events (see ``FLUSH_GAP``), and
the events are encoded with orjson, as taskq encodes task messages.

The same thread sends ``worker-online`` at start, ``worker-heartbeat`` every
``heartbeat_interval`` seconds (Celery: 2) with the fields Celery sends (freq,
active, processed, loadavg, sw_ident, sw_ver, sw_sys) and ``worker-offline`` at
``close``. Task events are sent only while ``task_events`` is set (the one
attribute callers check before building an event). A dispatcher with neither
heartbeats nor task events starts no thread and holds no buffer.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import kombu
import orjson
from kombu.clocks import LamportClock

from taskq.events import event as ev

log = logging.getLogger("taskq.events")

#: Events held while the broker is slow; past this they are dropped and counted.
BUFFER_LIMIT = 10_000
#: Most task events in one message.
BATCH_MAX = 1000
#: After a publish of at least BUSY events, the next waits FLUSH_GAP seconds, so
#: events that come meanwhile go out together: a busy worker publishes at most
#: 1/FLUSH_GAP messages a second (each costs the worker's own process a few hundred
#: microseconds of Python) instead of one per event. A quiet worker's events, a
#: few at a time, go out at once.
FLUSH_GAP = 0.02
BUSY = 32
#: Longest pause between two attempts to reach a broker that is down.
RECONNECT_MAX = 5.0
#: Seconds between two warnings about dropped events.
WARN_EVERY = 10.0

#: What a worker reports in its heartbeats: (tasks running now, tasks done so far).
Load = Callable[[], "tuple[int, int]"]


#: What a redacted field of an event says instead of its value.
REDACTED = "<encrypted>"


def redacted_fields(encrypt: bool, encrypt_results: bool) -> frozenset[str]:
    """The event fields that would show what ``security_encrypt`` (the arguments) and
    ``security_encrypt_results`` (results and errors) keep from the broker."""
    fields: set[str] = set()
    if encrypt:
        fields |= {"args", "kwargs"}
    if encrypt_results:
        fields |= {"result", "exception", "traceback"}
    return frozenset(fields)


class EventDispatcher:
    """Publishes events from a background thread (see the module docstring).

    Args:
        connection: makes the kombu connection to publish on (called by the thread).
        hostname: the sender's node name (``celery@host``), in every event.
        clock: the Lamport clock; a worker shares it with its remote control.
        task_events: send task events from the start (``-E``).
        load: for worker events: the sender's running and processed task counts;
            None for a producer, which sends no worker events.
        heartbeat_interval: seconds between heartbeats (with ``load``).
        buffer_limit: events held before new ones are dropped.
        exchange_name: the events exchange (Celery's ``event_exchange``).
    """

    def __init__(
        self,
        connection: Callable[[], kombu.Connection],
        hostname: str,
        *,
        clock: LamportClock | None = None,
        task_events: bool = False,
        load: Load | None = None,
        heartbeat_interval: float = 2.0,
        buffer_limit: int = BUFFER_LIMIT,
        exchange_name: str = ev.EXCHANGE_NAME,
        redact: frozenset[str] = frozenset(),
    ) -> None:
        self.hostname = hostname
        #: Fields sent as ``REDACTED``: what the messages or results encrypt.
        self.redact = redact
        self.clock = clock or LamportClock()
        #: Callers check this before building a task event (the whole cost when off).
        self.task_events = task_events
        self.sent = 0
        self.dropped = 0
        self._connect = connection
        self._load = load
        self._interval = heartbeat_interval
        self._limit = buffer_limit
        self._exchange_name = exchange_name
        self._buffer: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = threading.Event()  # cuts a FLUSH_GAP pause short
        self._conn: kombu.Connection | None = None
        self._producer: kombu.Producer | None = None
        self._exchange: kombu.Exchange | None = None
        self._errors: tuple[type[BaseException], ...] = (OSError,)
        self._retry_at = 0.0
        self._pause = 0.1
        self._warned_at = 0.0
        self._stamp = {"hostname": hostname, "pid": os.getpid(), "utcoffset": ev.utcoffset()}

    # -- the callers' side ---------------------------------------------------------------

    def send(self, event_type: str, **fields: Any) -> None:
        """Queue an event for sending; never blocks, never raises for the broker."""
        if len(self._buffer) >= self._limit:
            with self._lock:
                self.dropped += 1
            return
        self._buffer.append(self.event(event_type, fields))
        if not self._wake.is_set():
            self._wake.set()

    def event(self, event_type: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The event ``send`` queues for these fields (``fields`` is updated in place):
        the type and time added, and the fields in ``redact`` hidden."""
        if self.redact:
            for name in self.redact.intersection(fields):
                fields[name] = REDACTED
        fields["type"] = event_type
        fields["timestamp"] = time.time()
        return fields

    def start(self) -> None:
        """Start the thread when there is anything to send (worker events or task
        events); a worker's sends ``worker-online`` first."""
        if self._thread is not None or not (self._load is not None or self.task_events):
            return
        if self._load is not None:
            self._worker_event("worker-online")
        self._thread = threading.Thread(target=self._run, name="taskq-events", daemon=True)
        self._thread.start()

    def enable_task_events(self) -> bool:
        """Start sending task events; False if they were on already."""
        if self.task_events:
            return False
        self.task_events = True
        self.start()
        return True

    def disable_task_events(self) -> bool:
        """Stop sending task events; False if they were off already."""
        if not self.task_events:
            return False
        self.task_events = False
        return True

    def heartbeat_now(self) -> None:
        """Send a heartbeat at once (a receiver that just started asks for one)."""
        if self._load is not None and self._thread is not None:
            self._worker_event("worker-heartbeat")

    def close(self, timeout: float = 2.0) -> None:
        """Send ``worker-offline`` and what is buffered (for at most ``timeout``
        seconds), then stop the thread and close the connection."""
        thread = self._thread
        if thread is None:
            return
        if self._load is not None:
            self._worker_event("worker-offline")
        self._closing = True
        self._closed.set()
        self._wake.set()
        thread.join(timeout)
        self._thread = None
        if not thread.is_alive():
            self._disconnect()

    def counts(self) -> dict[str, int]:
        """Events sent, dropped, and waiting in the buffer now."""
        return {"sent": self.sent, "dropped": self.dropped, "buffered": len(self._buffer)}

    def _worker_event(self, event_type: str) -> None:
        assert self._load is not None
        active, processed = self._load()
        try:
            loadavg = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            loadavg = [0.0, 0.0, 0.0]
        if len(self._buffer) >= self._limit:  # the broker has been away a while
            with self._lock:
                self.dropped += 1
            return
        self._buffer.append(
            ev.make(
                event_type,
                freq=self._interval,
                active=active,
                processed=processed,
                loadavg=loadavg,
                **ev.SOFTWARE_INFO,
            )
        )
        self._wake.set()

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        beat_at = time.monotonic() + self._interval
        flushed_at, busy = 0.0, False
        while True:
            now = time.monotonic()
            waits = [self._retry_at - now] if self._buffer and self._retry_at > now else []
            if self._load is not None:
                waits.append(beat_at - now)
            self._wake.wait(max(0.0, min(waits)) if waits else None)
            pause = flushed_at + FLUSH_GAP - time.monotonic()
            if busy and pause > 0:
                self._closed.wait(pause)  # let a busy worker's events gather
            self._wake.clear()  # before taking the buffer: a send after it wakes us again
            if self._closing:
                self._flush(final=True)
                return
            now = time.monotonic()
            if self._load is not None and now >= beat_at:
                self._worker_event("worker-heartbeat")
                beat_at = now + self._interval
            busy = self._flush(final=False) >= BUSY
            flushed_at = time.monotonic()

    def _flush(self, final: bool) -> int:
        """Publish what is buffered; returns how many events were taken."""
        buffer, taken = self._buffer, 0
        while buffer:
            if not self._connected(final):
                return taken
            tasks: list[dict[str, Any]] = []
            while buffer and len(tasks) < BATCH_MAX:
                item = buffer.popleft()
                if item["type"].startswith("task-"):
                    tasks.append(item)
                else:
                    self._publish([item], ev.routing_key(item["type"]))
                taken += 1
            if len(tasks) == 1:
                self._publish(tasks, ev.routing_key(tasks[0]["type"]))
            elif tasks:
                self._publish(tasks, "task.multi")
        return taken

    def _connected(self, final: bool) -> bool:
        if self._producer is not None:
            return True
        if not final and time.monotonic() < self._retry_at:
            return False
        conn: kombu.Connection | None = None
        try:
            conn = self._connect()  # inside: building it can fail too (a missing transport)
            conn.ensure_connection(max_retries=1)
            self._errors = (OSError, *conn.connection_errors, *conn.channel_errors)
            self._exchange = ev.exchange(conn.transport.driver_type, self._exchange_name)
            self._producer = kombu.Producer(conn.channel(), auto_declare=False)
            self._producer.maybe_declare(self._exchange)
        except Exception as exc:
            if conn is not None:
                self._drop_conn(conn)
            self._retry_at = time.monotonic() + self._pause
            self._pause = min(self._pause * 2, RECONNECT_MAX)
            log.warning("Events: cannot reach the broker (%s); retrying", exc)
            if final:
                self._count_drops(len(self._buffer))
                self._buffer.clear()
            return False
        self._conn = conn
        self._pause = 0.1
        return True

    def _publish(self, events: list[dict[str, Any]], key: str) -> None:
        clock = self.clock
        with clock.mutex:  # one lock for the batch: consecutive clock values
            first = clock.value + 1
            clock.value += len(events)
        for tick, item in enumerate(events, first):
            item.update(self._stamp)
            item["clock"] = tick
        assert self._producer is not None and self._exchange is not None
        try:
            body = orjson.dumps(events if key == "task.multi" else events[0])
            self._producer.publish(
                body,
                routing_key=key,
                exchange=self._exchange.name,
                content_type="application/json",
                content_encoding="utf-8",
                headers={"hostname": self.hostname},
                delivery_mode=1,
                retry=False,
            )
        except self._errors as exc:
            log.warning("Events: publish failed (%s); dropping %d event(s)", exc, len(events))
            self._count_drops(len(events))
            self._disconnect()
            self._retry_at = time.monotonic() + self._pause
            return
        except (TypeError, orjson.JSONEncodeError) as exc:  # fields JSON cannot hold
            log.warning("Events: could not send %d event(s): %r", len(events), exc)
            self._count_drops(len(events))
            return
        except Exception as exc:  # anything else from the transport: start afresh
            log.warning("Events: publish failed (%r); dropping %d event(s)", exc, len(events))
            self._count_drops(len(events))
            self._disconnect()
            self._retry_at = time.monotonic() + self._pause
            return
        self.sent += len(events)

    def _count_drops(self, count: int) -> None:
        with self._lock:
            self.dropped += count
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            log.warning(
                "Events: %d dropped so far (the broker is slow or down); tasks are not delayed",
                self.dropped,
            )
            self._warned_at = now

    def _disconnect(self) -> None:
        conn, self._conn, self._producer = self._conn, None, None
        if conn is not None:
            self._drop_conn(conn)

    @staticmethod
    def _drop_conn(conn: kombu.Connection) -> None:
        try:
            conn.release()
        except Exception:  # closing a broken connection may fail too: it is gone anyway
            log.debug("Events: error closing the connection", exc_info=True)
