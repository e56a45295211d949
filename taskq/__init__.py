"""taskq: a Celery-compatible distributed task queue.

The names below are imported on first use (PEP 562 ``__getattr__``), not when the
package is: the ``taskq`` command must monkey-patch for the gevent and eventlet
pools before kombu, redis-py or anything using ``threading`` is imported (see
``taskq.monkey``), and every ``taskq.<module>`` import runs this file first.
``from taskq import App`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from taskq.version import __version__

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.canvas import (
        GroupResult,
        Signature,
        chain,
        chord,
        chunks,
        group,
        maybe_signature,
        subtask,
        xmap,
        xstarmap,
    )
    from taskq.canvas.signature import signature
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

#: Where each public name lives: name -> (module, attribute).
_HOMES = {
    "App": ("taskq.app", "App"),
    "GroupResult": ("taskq.canvas", "GroupResult"),
    "Signature": ("taskq.canvas", "Signature"),
    "chain": ("taskq.canvas", "chain"),
    "chord": ("taskq.canvas", "chord"),
    "chunks": ("taskq.canvas", "chunks"),
    "group": ("taskq.canvas", "group"),
    "maybe_signature": ("taskq.canvas", "maybe_signature"),
    "signature": ("taskq.canvas", "signature"),
    "subtask": ("taskq.canvas", "subtask"),
    "xmap": ("taskq.canvas", "xmap"),
    "xstarmap": ("taskq.canvas", "xstarmap"),
    "BackendError": ("taskq.errors", "BackendError"),
    "BrokerError": ("taskq.errors", "BrokerError"),
    "ConfigurationError": ("taskq.errors", "ConfigurationError"),
    "DecodeError": ("taskq.errors", "DecodeError"),
    "EncodeError": ("taskq.errors", "EncodeError"),
    "Ignore": ("taskq.errors", "Ignore"),
    "MaxRetriesExceededError": ("taskq.errors", "MaxRetriesExceededError"),
    "NotRegistered": ("taskq.errors", "NotRegistered"),
    "Reject": ("taskq.errors", "Reject"),
    "Retry": ("taskq.errors", "Retry"),
    "SoftTimeLimitExceeded": ("taskq.errors", "SoftTimeLimitExceeded"),
    "TaskError": ("taskq.errors", "TaskError"),
    "TaskqError": ("taskq.errors", "TaskqError"),
    "TimeLimitExceeded": ("taskq.errors", "TimeLimitExceeded"),
    "TimeoutError": ("taskq.errors", "TimeoutError"),
    "AsyncResult": ("taskq.result", "AsyncResult"),
    "states": ("taskq.result", "states"),
    "crontab": ("taskq.schedules", "crontab"),
    "every": ("taskq.schedules", "every"),
    "solar": ("taskq.schedules", "solar"),
    "current_app": ("taskq.shared", "current_app_proxy"),
    "shared_task": ("taskq.shared", "shared_task"),
    "Task": ("taskq.task", "Task"),
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'taskq' has no attribute {name!r}")
    value = getattr(importlib.import_module(home[0]), home[1])
    globals()[name] = value  # the next lookup is a plain global
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
