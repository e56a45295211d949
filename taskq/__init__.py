"""taskq: a Celery-compatible distributed task queue."""

from taskq.app import App
from taskq.canvas import (
    GroupResult,
    Signature,
    chain,
    chord,
    chunks,
    group,
    maybe_signature,
    signature,
    subtask,
    xmap,
    xstarmap,
)
from taskq.errors import (
    BackendError,
    BrokerError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    Ignore,
    MaxRetriesExceededError,
    NotRegistered,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TaskqError,
    TimeLimitExceeded,
    TimeoutError,
)
from taskq.result import AsyncResult, states
from taskq.schedules import crontab, every, solar
from taskq.shared import current_app_proxy as current_app
from taskq.shared import shared_task
from taskq.task import Task
from taskq.version import __version__

__all__ = [
    "current_app",
    "xstarmap",
    "xmap",
    "subtask",
    "maybe_signature",
    "chunks",
    "App",
    "AsyncResult",
    "BackendError",
    "BrokerError",
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "GroupResult",
    "Ignore",
    "MaxRetriesExceededError",
    "NotRegistered",
    "Reject",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskError",
    "TaskqError",
    "TimeLimitExceeded",
    "TimeoutError",
    "chain",
    "chord",
    "crontab",
    "every",
    "group",
    "shared_task",
    "signature",
    "solar",
    "states",
    "__version__",
]
