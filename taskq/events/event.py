"""Celery's event format: what one event is, where it is published, and its clock.

An event is a JSON object with ``type`` (``"task-succeeded"``, ``"worker-heartbeat"``,
...), ``timestamp`` (Unix time at the sender), ``utcoffset`` (the sender's offset
from UTC in hours, west positive, as ``time.timezone``), ``hostname`` and ``pid``
of the sender, ``clock`` (its Lamport clock, so receivers can order events from
several hosts) and the fields of its type. It is published on the ``celeryev``
exchange with the type as routing key, dashes turned into dots
(``task.succeeded``); several task events go as one message, a JSON list, under
``task.multi`` (what Celery's workers do when they buffer). The exchange is a
topic exchange on RabbitMQ and a fanout one on Redis (kombu's Redis transport
implements fanout as ``PUBLISH`` on ``/<db>.celeryev/<routing key>``), exactly as
Celery declares it, so ``celery events``, Flower and taskq read the same stream.
"""

from __future__ import annotations

import platform
import time
from typing import Any

import kombu

from taskq.version import __version__

#: Celery's default ``event_exchange``.
EXCHANGE_NAME = "celeryev"

#: What a worker says about its software in worker events (Celery: ``py-celery``).
SOFTWARE_INFO: dict[str, str] = {
    "sw_ident": "py-taskq",
    "sw_ver": __version__,
    "sw_sys": platform.system(),
}

#: Task event types and the task state each one means (Celery's ``TASK_EVENT_TO_STATE``).
TASK_STATES = {
    "task-sent": "PENDING",
    "task-received": "RECEIVED",
    "task-started": "STARTED",
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-retried": "RETRY",
    "task-rejected": "REJECTED",
    "task-revoked": "REVOKED",
}

#: Worker event types.
WORKER_EVENTS = ("worker-online", "worker-heartbeat", "worker-offline")


def exchange(driver_type: str, name: str = EXCHANGE_NAME) -> kombu.Exchange:
    """The events exchange as Celery declares it: a durable topic exchange, made a
    fanout exchange on Redis (Celery's ``get_exchange``)."""
    kind = "fanout" if driver_type in ("redis", "gcpubsub") else "topic"
    return kombu.Exchange(name, type=kind)


def routing_key(event_type: str) -> str:
    """``task-succeeded`` -> ``task.succeeded``."""
    return event_type.replace("-", ".")


def group_of(event_type: str) -> str:
    """``task-succeeded`` -> ``task``; ``worker-heartbeat`` -> ``worker``."""
    return event_type.split("-", 1)[0]


def utcoffset() -> int:
    """This host's offset from UTC in whole hours, west positive (Celery's field)."""
    if time.localtime().tm_isdst:
        return time.altzone // 3600
    return time.timezone // 3600


def adjust_timestamp(timestamp: float, offset: int) -> float:
    """A sender's ``timestamp`` in this host's terms, given the sender's ``utcoffset``."""
    return timestamp - (offset - utcoffset()) * 3600


def make(event_type: str, **fields: Any) -> dict[str, Any]:
    """An event of ``event_type`` with ``fields``, stamped with the time now."""
    fields["type"] = event_type
    fields.setdefault("timestamp", time.time())
    return fields
