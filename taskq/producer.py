"""The producer: turning a call into a message and handing it to the broker.

``Producer`` owns what sending needs: the broker connection (opened on the first
publish), the route cache, the publish retry policy, and, with
``task_send_sent_event``, the dispatcher of ``task-sent`` events (started on the
first send; with the setting off, a send costs one attribute check for it). The app makes one and
hands it to its tasks; canvas and the worker (retries, chain steps, callbacks)
send through it too. A call's options are ``apply_async``'s public ones; what
only the package passes (the task object, the request being retried) travels as
keyword arguments, never inside the options.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn
from zoneinfo import ZoneInfo

from taskq import events, message, routing, serialization
from taskq.broker import connect
from taskq.canvas import Signature
from taskq.config import broker_url_of
from taskq.context import Context, current_request
from taskq.errors import (
    BrokerError,
    ConfigurationError,
    EncodeError,
    MessageRefused,
    did_you_mean,
)
from taskq.events import EventDispatcher
from taskq.queues import Queues
from taskq.urls import mask_url

if TYPE_CHECKING:
    from taskq.broker.base import Broker, Envelope
    from taskq.config import Settings
    from taskq.security import Security
    from taskq.task import Task

log = logging.getLogger("taskq.producer")

CALL_OPTIONS = frozenset(
    {
        "countdown", "eta", "expires", "queue", "priority", "task_id", "headers",
        "serializer", "ignore_result", "retry", "retry_policy", "link", "link_error",
        "time_limit", "soft_time_limit", "parent_id", "root_id", "group_id",
        "group_index", "chord", "chain", "shadow", "reply_to",
    }
)  # fmt: skip

#: Headers Celery 5 sends with every task message (canvas stamping, Task.replace), so
#: a Celery worker or tool sees a taskq message as one of its own.
CELERY_HEADERS: dict[str, Any] = {"replaced_task_nesting": 0, "stamped_headers": None, "stamps": {}}

#: Messages a ``broker.publish_many`` call when sending many (``send_many``): bounds
#: the encoded messages held in memory and what a retry sends again.
BULK_CHUNK = 1000

# Task attributes that are defaults for a call's options (None: not set on the task).
_TASK_DEFAULTS = (
    "queue", "priority", "serializer", "expires", "time_limit", "soft_time_limit",
    "ignore_result",
)  # fmt: skip


class Outgoing(NamedTuple):
    """A call encoded and ready to publish: where it goes and how it is sent."""

    id: str
    envelope: Envelope
    queue: str
    priority: int | None
    eta: datetime | None
    retry: bool | None
    retry_policy: Mapping[str, Any] | None


class Producer:
    """Sends task messages for one app's settings.

    Args:
        conf: the app's settings, read when a call is sent (so settings changed
            after the producer was made apply).

    Nothing connects until the first publish. Thread-safe: calls from several
    threads share the broker connection, which each broker makes safe.
    """

    def __init__(self, conf: Settings, security: Security | None = None) -> None:
        self.conf = conf
        self.security = security
        self._broker: Broker | None = None
        self._lock = threading.Lock()
        self._routes: routing.RouteCache | None = None
        self._queue_table: tuple[Any, Queues] | None = None  # (task_queues, its table)
        self._oid = (0, "")  # (pid, reply address): see _reply_to
        self._events: EventDispatcher | None = None
        self._inherited: list[Broker | EventDispatcher] = []  # see reset

    @property
    def broker(self) -> Broker:
        """The producer's broker connection, opened on first use."""
        if self._broker is not None:  # every send asks: no lock once it is open
            return self._broker
        with self._lock:
            if self._broker is None:
                self._broker = connect(
                    self.conf, f"producer-{uuid.uuid4().hex[:12]}", producer=True
                )
            return self._broker

    @property
    def events(self) -> EventDispatcher:
        """The dispatcher of ``task-sent`` events, started on first use. On a broker
        that cannot broadcast (SQLite) it sends nothing, and says so once."""
        if self._events is not None:
            return self._events
        with self._lock:
            if self._events is None:
                self._events = self._new_events()
            return self._events

    def _new_events(self) -> EventDispatcher:
        conf, url = self.conf, broker_url_of(self.conf)
        can = events.broadcasts(url)
        if not can:
            log.warning(
                "task_send_sent_event is set but the broker %s cannot broadcast events; "
                "no task-sent events are sent (docs/monitoring.md).",
                mask_url(url),
            )
        dispatcher = EventDispatcher(
            lambda: events.connect(
                url, connect_timeout=conf.broker_connection_timeout, what="Events"
            ),
            f"gen{os.getpid()}@{socket.gethostname()}",
            task_events=can,
            exchange_name=conf.event_exchange,
            redact=_redacted(conf),
        )
        dispatcher.start()
        return dispatcher

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        task: Task[Any, Any] | None = None,
        retry_of: Context | None = None,
    ) -> str:
        """Send one call with its publish retry policy; return its task id.

        Args:
            task: the registered task, whose attributes are the call's defaults.
            retry_of: the request this call retries: the new message keeps its
                place in the workflow and counts one more retry.

        Raises:
            ConfigurationError: an unknown option or a bad countdown/eta/expires.
            BrokerError: the broker did not take the message after the retry policy.
        """
        out = self.prepare(name, args, kwargs, options or {}, task=task, retry_of=retry_of)
        self.send(out)
        return out.id

    def reset(self) -> None:
        """Forget the connection without closing it (a forked child's is its
        parent's: closing it here could close the parent's session), so the next
        send opens a new one. The old one stays referenced, never collected here."""
        self._inherited.extend(c for c in (self._broker, self._events) if c is not None)
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._broker = None
        self._events = None  # its thread did not survive the fork

    def flush(self) -> None:
        """Return once the broker has stored every message sent so far (on RabbitMQ,
        delay() returns before its confirm: docs/reliability.md), with the publish
        retry policy. The worker calls it before it acks a task that sent messages.

        Raises:
            BrokerError: not all could be confirmed when the policy was spent
                (``MessageRefused``: the broker refused some).
        """
        broker = self._broker
        if broker is None:
            return
        try:  # the worker asks after every task: mostly there is nothing to wait for
            broker.flush()
            return
        except MessageRefused:
            raise
        except BrokerError:
            pass
        self._with_retries(lambda b: b.flush(), lambda: "unconfirmed messages", None, None)

    def close(self) -> None:
        """Close the connection; the next send opens a new one."""
        with self._lock:
            if self._broker is not None:
                self._broker.close()
                self._broker = None
            events, self._events = self._events, None
        if events is not None:
            events.close()  # outside the lock: it may wait for the last events to go

    # -- building --------------------------------------------------------------------

    def prepare(
        self,
        name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
        *,
        task: Task[Any, Any] | None = None,
        retry_of: Context | None = None,
    ) -> Outgoing:
        """Build and encode a call (``apply_async``'s options) without publishing it."""
        options = dict(options)
        retry, retry_policy = options.pop("retry", None), options.pop("retry_policy", None)
        msg, queue, priority, merged = self.build(
            name, args, kwargs, options, task=task, retry_of=retry_of
        )
        serializer = merged.get("serializer") or self.conf.task_serializer
        try:
            envelope = message.encode(msg, serializer, priority)
        except EncodeError as exc:
            raise _encode_error(name, msg.args, msg.kwargs, serializer, exc) from exc
        sealer = self.security.sealer if self.security is not None else None
        if sealer is not None:
            envelope = sealer.seal(envelope)
        return Outgoing(msg.id, envelope, queue, priority, msg.eta, retry, retry_policy)

    def build(
        self,
        name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: dict[str, Any],
        *,
        task: Task[Any, Any] | None = None,
        retry_of: Context | None = None,
    ) -> tuple[message.TaskMessage, str, int | None, dict[str, Any]]:
        """The message for a call, its queue, its priority, and the merged options."""
        conf = self.conf
        if options and not CALL_OPTIONS.issuperset(options):
            options = routing.celery_call_options(options, self._queues)
            if not CALL_OPTIONS.issuperset(options):
                _unknown_option(name, options)
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        merged = self._merged(name, args, kwargs, options, task)
        get = merged.get
        eta = expires = None
        if get("countdown") is not None or get("eta") is not None or get("expires") is not None:
            eta, expires = _times(get("countdown"), get("eta"), get("expires"), conf.timezone)
        fields = {
            "id": get("task_id") or message.new_id(),
            "task": name,
            "args": args,
            "kwargs": kwargs,
            "root_id": get("root_id"),
            "parent_id": get("parent_id"),
            "group": get("group_id") or None,
            "group_index": get("group_index"),
            "eta": eta,
            "expires": expires,
            "retries": 0,
            "time_limit": get("time_limit", conf.task_time_limit),
            "soft_time_limit": get("soft_time_limit", conf.task_soft_time_limit),
            "ignore_result": bool(get("ignore_result", conf.task_ignore_result)),
            "callbacks": _signatures(get("link")) or None,
            "errbacks": _signatures(get("link_error")) or None,
            "chain": get("chain") or None,
            "chord": get("chord") or None,
            "reply_to": get("reply_to") or self._reply_to(),
            "origin": None,
            "shadow": get("shadow"),
            "extra_headers": {**CELERY_HEADERS, **(get("headers") or {})},
        }
        _place(fields, retry_of)
        queue = get("queue") or conf.task_default_queue
        if not conf.task_create_missing_queues:
            self._queues()[queue]  # raises ConfigurationError for an undeclared queue
        priority = get("priority", conf.task_default_priority)
        return message.TaskMessage.from_fields(fields), queue, priority, merged

    def _reply_to(self) -> str:
        """This process's reply address, sent as ``reply_to`` as Celery sends its own
        (Celery's rpc backend would answer there; taskq's backends do not use it)."""
        pid = os.getpid()
        if self._oid[0] != pid:  # made again in a forked child
            self._oid = (pid, str(uuid.uuid4()))
        return self._oid[1]

    def _queues(self) -> Queues:
        """The queue table of the settings, rebuilt when ``task_queues`` is replaced."""
        setting = self.conf.task_queues
        if self._queue_table is None or self._queue_table[0] is not setting:
            self._queue_table = (setting, Queues.from_settings(self.conf))
        return self._queue_table[1]

    def _merged(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        task: Task[Any, Any] | None,
    ) -> dict[str, Any]:
        """The task's defaults, then its route, then the call's options: the last given wins."""
        merged: dict[str, Any] = {}
        if task is not None:  # read at each send: a task's attributes may be changed
            merged = {key: v for key in _TASK_DEFAULTS if (v := getattr(task, key)) is not None}
        routes = self.conf.task_routes
        if routes is not None:
            cache = self._routes
            if cache is None or cache.routes is not routes:  # replaced: see routing.RouteCache
                cache = self._routes = routing.RouteCache(routes)
            merged.update(cache.route(name, args, kwargs, options))
        merged.update(options)
        return merged

    # -- sending ---------------------------------------------------------------------

    def send(self, out: Outgoing) -> None:
        """Publish one prepared call with its retry policy; raise ``BrokerError`` when spent."""
        # task_eta_in_queue: publish at once, as Celery does (the eta header stays), so
        # Celery workers, which never look in taskq's delayed store, get it.
        eta = None if self.conf.task_eta_in_queue else out.eta
        self.publish(
            out.envelope, out.queue, out.priority, eta,
            retry=out.retry, retry_policy=out.retry_policy,
        )  # fmt: skip
        if self.conf.task_send_sent_event:
            self._sent_event(out)

    def _sent_event(self, out: Outgoing) -> None:
        """Celery's ``task-sent`` event for a published call (``task_send_sent_event``)."""
        headers = out.envelope.headers
        self.events.send(
            "task-sent",
            uuid=out.id,
            root_id=headers.get("root_id"),
            parent_id=headers.get("parent_id"),
            name=headers.get("task"),
            args=headers.get("argsrepr"),
            kwargs=headers.get("kwargsrepr"),
            retries=headers.get("retries"),
            eta=headers.get("eta"),
            expires=headers.get("expires"),
            queue=out.queue,
            exchange="",
            routing_key=out.queue,
        )

    def send_many(self, outgoing: Iterable[Outgoing]) -> None:
        """Publish prepared calls in chunks of ``BULK_CHUNK`` through ``broker.publish_many``
        (one pipeline a chunk on Redis, one transaction on SQLite), each chunk with the
        retry policy of its calls. Calls with an eta go one by one through ``send``:
        ``publish_many`` takes none. ``outgoing`` is read as it is sent, so a generator
        keeps at most one chunk of encoded messages in memory.

        At least once, as ``send``: a chunk whose publish failed part-way (the connection
        lost mid-pipeline) is sent whole again by the retry, so some of its messages may
        be queued twice, and none is lost while the policy lasts. When it is spent,
        ``BrokerError`` is raised; the chunks before stay sent.
        """
        batch: list[Outgoing] = []
        for out in outgoing:
            if out.eta is not None:
                self.send(out)
            elif not batch or (len(batch) < BULK_CHUNK and _same_policy(out, batch[0])):
                batch.append(out)
            else:
                self._send_batch(batch)
                batch = [out]
        if batch:
            self._send_batch(batch)

    def _send_batch(self, batch: list[Outgoing]) -> None:
        items = [(out.envelope, out.queue, out.priority) for out in batch]
        first = batch[0]
        self._with_retries(
            lambda broker: broker.publish_many(items),
            lambda: f"{len(items)} task messages (the first {_name(first.envelope)})",
            first.retry,
            first.retry_policy,
        )
        if self.conf.task_send_sent_event:
            for out in batch:
                self._sent_event(out)

    def publish(
        self,
        envelope: Envelope,
        queue: str,
        priority: int | None,
        eta: datetime | None,
        *,
        retry: bool | None = None,
        retry_policy: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish with the retry policy; raise ``BrokerError`` when it is spent."""
        eta_ts = eta.timestamp() if eta is not None else None
        self._with_retries(
            lambda broker: broker.publish(envelope, queue, priority=priority, eta=eta_ts),
            lambda: f"task {_name(envelope)}",
            retry,
            retry_policy,
        )

    def _with_retries(
        self,
        send: Callable[[Broker], None],
        what: Callable[[], str],
        retry: bool | None,
        retry_policy: Mapping[str, Any] | None,
    ) -> None:
        """Call ``send`` until it returns, pausing between attempts as the publish retry
        policy says; raise ``BrokerError`` naming ``what()`` when the policy is spent or
        ``broker_publish_timeout`` would pass.

        The brokers bound one attempt to half of that deadline (their socket timeouts
        are derived from it), and another attempt starts only while that much is left,
        so a call returns or raises within the deadline whatever the server does: a
        server that never answers, one that speaks TLS to a plain client (issue 12).
        """
        broker = self.broker
        limit = self.conf.broker_publish_timeout
        started = time.monotonic()
        try:
            send(broker)
            return
        except MessageRefused:
            raise  # messages sent earlier; sending again cannot bring them back
        except BrokerError as exc:
            failure = exc
        attempts = 1
        for pause in self._pauses(retry, retry_policy):  # read only now: most succeed
            if time.monotonic() + pause + limit / 2 > started + limit:
                break
            log.warning("publish failed (%s); retrying in %.2fs", failure, pause)
            time.sleep(pause)
            attempts += 1
            try:
                send(broker)
                return
            except MessageRefused:
                raise
            except BrokerError as exc:
                failure = exc
        raise BrokerError(
            f"Could not publish {what()} after {attempts} attempt(s) in "
            f"{time.monotonic() - started:.1f} s (broker_publish_timeout is {limit:g} s): "
            f"{failure}"
        ) from failure

    def _pauses(self, retry: bool | None, retry_policy: Mapping[str, Any] | None) -> list[float]:
        """The pause before each retry under ``task_publish_retry(_policy)``; none when off."""
        conf = self.conf
        if not (conf.task_publish_retry if retry is None else retry):
            return []
        policy = {**conf.task_publish_retry_policy, **(retry_policy or {})}
        interval = float(policy.get("interval_start", 0.0))
        step, ceiling = (
            float(policy.get("interval_step", 0.2)),
            float(policy.get("interval_max", 1.0)),
        )
        pauses = []
        for _ in range(int(policy.get("max_retries") or 0)):
            pauses.append(interval)
            interval = min(interval + step, ceiling)
        return pauses


def _redacted(conf: Settings) -> frozenset[str]:
    """The event fields to hide when the settings encrypt messages or results."""
    if not conf.security_keys:
        return frozenset()
    return events.redacted_fields(conf.security_encrypt, conf.security_encrypt_results)


def _unknown_option(name: str, options: Mapping[str, Any]) -> NoReturn:
    bad = sorted(set(options) - CALL_OPTIONS)[0]
    raise ConfigurationError(
        f"Unknown option {bad!r} for {name}.apply_async().{did_you_mean(bad, CALL_OPTIONS)} "
        "Task arguments go in args=/kwargs=, options are: " + ", ".join(sorted(CALL_OPTIONS))
    )


def _place(fields: dict[str, Any], retry_of: Context | None) -> None:
    """Fill in where the message stands in its workflow, unless the call said."""
    if retry_of is None:  # a task sent from inside a running task is its child
        current = current_request.get()
        if current is not None:
            fields["root_id"] = fields["root_id"] or current.root_id or current.id
            fields["parent_id"] = fields["parent_id"] or current.id
        return
    # A retry keeps its place in the workflow.
    fields["retries"] = retry_of.retries + 1
    for field, inherited in (
        ("root_id", retry_of.root_id),
        ("parent_id", retry_of.parent_id),
        ("group", retry_of.group),
        ("callbacks", retry_of.callbacks),
        ("errbacks", retry_of.errbacks),
        ("chain", retry_of.chain),
        ("chord", retry_of.chord),
    ):
        fields[field] = fields[field] or inherited
    if fields["group_index"] is None:  # 0 is the first member's index
        fields["group_index"] = retry_of.group_index


def _same_policy(one: Outgoing, other: Outgoing) -> bool:
    # Identity first: the calls of one group or delay_many share their options.
    return one.retry is other.retry and (
        one.retry_policy is other.retry_policy or one.retry_policy == other.retry_policy
    )


def _name(envelope: Envelope) -> str:
    return f"{envelope.headers.get('task')}[{envelope.headers.get('id')}]"


def _times(
    countdown: Any, eta: Any, expires: Any, timezone_name: str
) -> tuple[datetime | None, datetime | None]:
    """The message's eta and expiry as aware datetimes; a naive datetime is wall-clock
    time in the app's timezone setting (UTC by default)."""
    now = datetime.now(timezone.utc)
    return _eta(countdown, eta, now, timezone_name), _expires(expires, now, timezone_name)


def _eta(countdown: Any, eta: Any, now: datetime, timezone_name: str) -> datetime | None:
    if countdown is not None and eta is not None:
        raise ConfigurationError("Give countdown or eta, not both.")
    if countdown is not None:
        seconds = _seconds("countdown", countdown)
        return now + timedelta(seconds=seconds) if seconds > 0 else None
    if eta is None:
        return None
    if not isinstance(eta, datetime):
        raise ConfigurationError(
            f"eta must be a datetime, got {eta!r}; use countdown= for seconds."
        )
    return eta if eta.tzinfo else eta.replace(tzinfo=ZoneInfo(timezone_name))


def _expires(expires: Any, now: datetime, timezone_name: str) -> datetime | None:
    if expires is None:
        return None
    if isinstance(expires, datetime):
        return expires if expires.tzinfo else expires.replace(tzinfo=ZoneInfo(timezone_name))
    if isinstance(expires, (int, float, timedelta)):
        return now + timedelta(seconds=_seconds("expires", expires))
    raise ConfigurationError(
        f"expires must be seconds, a timedelta or a datetime, got {expires!r}."
    )


#: The longest countdown or expiry accepted: 100 years, far inside what datetime holds.
MAX_DELAY = 100 * 365 * 86400.0


def _seconds(option: str, value: Any) -> float:
    """``value`` (seconds or a timedelta) as float seconds, finite and in range."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{option} must be seconds or a timedelta, got {value!r}.")
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    if not -MAX_DELAY <= seconds <= MAX_DELAY:  # also NaN and infinities
        raise ConfigurationError(
            f"{option}={value!r:.40} is not a usable number of seconds: give a finite number "
            f"within {MAX_DELAY:.0f} (100 years), or an eta/expires datetime."
        )
    return seconds


def _signatures(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    return [dict(Signature.from_dict(item)) for item in items]


def _encode_error(
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    serializer: str,
    exc: Exception,
) -> EncodeError:
    """Which argument the serializer refused, found by encoding each on its own (only
    after a failure, so sends that work pay nothing for it)."""
    named = [(f"args[{i}]", value) for i, value in enumerate(args)]
    named += [(f"kwargs[{key!r}]", value) for key, value in kwargs.items()]
    for where, value in named:
        try:
            serialization.dumps(value, serializer)
        except EncodeError as refused:
            return EncodeError(
                f"Task {name!r}: {where} = {value!r:.80} cannot be serialized with "
                f"{serializer}: {refused}. Send values {serializer} can encode (for json: "
                "str, int, float, bool, None, and lists and dicts of them), convert it "
                "first, or choose another serializer (serializer= on the task or the call)."
            )
    return EncodeError(
        f"Task {name!r}: the message cannot be serialized with {serializer}: {exc}. "
        "Check its headers and linked signatures."
    )
