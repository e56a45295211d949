"""Remote control: Celery's pidbox protocol, both sides, and persistent revokes.

``Control`` / ``Inspect`` (``app.control``) send commands; ``ControlServer`` runs in
a worker and answers them through ``WorkerHandle`` with ``commands``;
``revokes`` keeps revoked ids in the result backend.
"""

from taskq.control.client import Control, Inspect, flatten
from taskq.control.handle import CommandError, Scheduled, TaskInfo, WorkerHandle
from taskq.control.revokes import DEFAULT_REVOKE_TTL, signal_number, terminations

__all__ = [
    "DEFAULT_REVOKE_TTL",
    "CommandError",
    "Control",
    "Inspect",
    "Scheduled",
    "TaskInfo",
    "WorkerHandle",
    "flatten",
    "signal_number",
    "terminations",
]
