"""One received message: its decoded task and its acknowledgement state.

A ``Request`` is settled exactly once (ack, requeue or dead-letter); a second
settle is ignored, so no code path can ack a message twice or ack one that was
handed back. A request with ``acks_late`` off is acked when it starts
(``started``), so what happens to it afterwards cannot bring it back.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from taskq.context import Context
from taskq.message import CONTEXT_NAMES, TaskMessage

if TYPE_CHECKING:
    from taskq.broker.base import Broker, Delivery
    from taskq.events import EventDispatcher

log = logging.getLogger("taskq.worker")

_CONTEXT_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(Context) if f.default is not dataclasses.MISSING
}
_SET_HERE = {"time_limit", "soft_time_limit", "hostname", "delivery_info", "headers"}
if {f.name for f in dataclasses.fields(Context)} - {*_CONTEXT_DEFAULTS, *CONTEXT_NAMES, *_SET_HERE}:
    raise RuntimeError("Request.context leaves a Context field without a default unset")


class Request:
    """A task message leased to this worker."""

    def __init__(
        self,
        delivery: Delivery,
        message: TaskMessage,
        broker: Broker,
        hostname: str,
        headers: dict[str, Any] | None = None,
    ):
        self.delivery = delivery
        self.message = message
        #: The message's headers as its producer sent them: inside the seal of a
        #: signed message (``taskq.security``), else the delivery's.
        self.headers = delivery.envelope.headers if headers is None else headers
        self.broker = broker
        self.hostname = hostname
        #: False: ack when the task starts rather than when it is done.
        self.acks_late = True
        #: The (soft, hard) time limits in seconds the worker resolved for it.
        self.soft_time_limit: float | None = message.soft_time_limit
        self.time_limit: float | None = message.time_limit
        #: When a pool began it (Unix time), and the process it runs in if not this one.
        self.time_start: float | None = None
        self.worker_pid: int | None = None
        #: Where its task-started event goes (None: task events are off).
        self.events: EventDispatcher | None = None
        self._settled = False
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def name(self) -> str:
        return self.message.task

    def __repr__(self) -> str:
        return f"<Request {self.name}[{self.id}]>"

    def context(self) -> Context:
        """The running task's ``self.request``: the message's fields that a context
        has (``taskq.message.CONTEXT_NAMES``, from the one declaration of the fields),
        the limits this worker resolved, and where the message came from."""
        # Filled in one step, as TaskMessage.from_fields does: the generated __init__
        # of its 26 fields cost twice as much (about 2 us more a task).
        ctx = object.__new__(Context)
        values = ctx.__dict__
        values.update(_CONTEXT_DEFAULTS)
        values.update(self.message.context_values())
        values.update(
            time_limit=self.time_limit,
            soft_time_limit=self.soft_time_limit,
            hostname=self.hostname,
            delivery_info={
                "routing_key": self.delivery.queue,
                "delivery_tag": self.delivery.tag,
                "redelivered": self.delivery.delivery_count > 1,
                "priority": self.delivery.envelope.properties.get("priority"),
            },
            headers=dict(self.headers),
            called_directly=False,
        )
        return ctx

    def _settle(self) -> bool:
        with self._lock:
            if self._settled:
                return False
            self._settled = True
            return True

    @property
    def settled(self) -> bool:
        return self._settled

    def may_run(self) -> bool:
        """Whether the message is still leased to this worker, so running it cannot
        duplicate a run elsewhere (``Broker.still_leased``: a clock read unless the
        worker's lease may have lapsed, say after a SIGSTOP longer than the lease).
        When it is not, the message is back in its queue for another worker: this
        request is settled without a word to the broker and must not run.

        Raises:
            BrokerError: the lease had to be checked and the broker did not answer.
        """
        if self.broker.still_leased(self.delivery):
            return True
        with self._lock:
            self._settled = True
        log.warning(
            "Not running %s[%s]: this worker's lease lapsed after it was fetched and it "
            "went back to its queue (another worker runs it)",
            self.name,
            self.id,
        )
        return False

    def started(self) -> None:
        """The pool is about to run it: note the time, send ``task-started`` when task
        events are on, and ack now unless ``acks_late``. This ack is sent before the
        task runs (at most once: a crash must not run it again)."""
        self.time_start = time.time()
        if self.events is not None:
            self.events.send("task-started", uuid=self.message.id)
        if not self.acks_late and self._settle():
            self.broker.ack([self.delivery])

    def ack(self) -> None:
        """Done with it. The broker may send the ack with its next round trip
        (``Broker.ack_soon``): a crash before then runs the task again."""
        if self._settle():
            self.broker.ack_soon([self.delivery])

    def requeue(self) -> None:
        if self._settle():
            self.broker.requeue([self.delivery])

    def dead_letter(self, reason: str) -> None:
        if self._settle():
            log.error("Dead-lettering %s[%s]: %s", self.name, self.id, reason)
            self.broker.dead_letter(self.delivery, reason)
