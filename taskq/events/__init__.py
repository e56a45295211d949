"""Events: Celery's monitoring protocol, sent by workers and producers, read by
``taskq events``, ``celery events``, Flower and dashboards.

``EventDispatcher`` sends (never blocking the sender), ``EventReceiver`` reads,
``FleetState`` keeps the picture of workers and tasks they draw.
"""

from taskq.events.connection import broadcasts, connect
from taskq.events.dispatcher import EventDispatcher, redacted_fields
from taskq.events.receiver import EventReceiver
from taskq.events.state import FleetState, TaskState, WorkerState

__all__ = [
    "EventDispatcher",
    "EventReceiver",
    "FleetState",
    "TaskState",
    "WorkerState",
    "broadcasts",
    "connect",
    "redacted_fields",
]
