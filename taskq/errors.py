"""One exception tree for taskq.

``TaskqError`` is the root of everything that means "something went wrong".
Control flow raised from inside tasks (``Retry``, ``Reject``, ``Ignore``) lives in a
separate family under ``TaskControl`` and is never logged as a failure.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from datetime import datetime
from typing import Any


class TaskqError(Exception):
    """Base class of every taskq error."""


class ConfigurationError(TaskqError):
    """A setting, URL or option is wrong; the message says which and how to fix it."""


class BrokerError(TaskqError):
    """The broker could not be reached or refused an operation."""


class MessageRefused(BrokerError):
    """The broker refused messages published earlier (a negative publisher confirm on
    RabbitMQ with ``publish_confirms="pipelined"``). Raised by the next publish or
    flush; retrying that call cannot bring them back, so the producer does not."""


class BackendError(TaskqError):
    """The result backend could not be reached or refused an operation."""


class NotRegistered(TaskqError, KeyError):
    """A task name is not registered with the app (or the worker)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not registered"


class DecodeError(TaskqError):
    """A message or payload could not be decoded."""


class EncodeError(TaskqError, ValueError):
    """A value could not be serialized; the message names the task and the argument
    (``args[1]``, ``kwargs['when']``) or the value, and what to do."""


class SecurityError(DecodeError):
    """A message or result is not signed (or sealed) by a key this process trusts,
    or its signature does not match: it was forged or altered (``taskq.security``)."""


class ContentDisallowed(DecodeError):
    """A message used a serializer that is not in ``accept_content``."""


class TimeoutError(TaskqError):  # noqa: A001 - mirrors celery.exceptions.TimeoutError
    """Waiting for a result took longer than the timeout."""


class TaskError(TaskqError):
    """A task failed with an exception that is not rebuilt here (its class is not
    loaded in this process, is no ``Exception``, or could not be built), or a stored
    result could not be stored or read.

    Attributes:
        exc_type: the original exception's type name, when known.
        exc_module: the module that defined it, when known.
        exc_args: the arguments it was raised with, as stored.
        traceback: the task's traceback text, when the result has one.
    """

    def __init__(
        self,
        message: str = "",
        *,
        exc_type: str | None = None,
        exc_module: str | None = None,
        exc_args: tuple[Any, ...] = (),
        traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.exc_type = exc_type
        self.exc_module = exc_module
        self.exc_args = exc_args
        self.traceback = traceback


class MaxRetriesExceededError(TaskqError):
    """``Task.retry`` was called after ``max_retries`` attempts."""


class SoftTimeLimitExceeded(TaskqError):
    """Raised inside a task when its soft time limit passes, so it can clean up."""


class TimeLimitExceeded(TaskqError):
    """The task's hard time limit passed and the task was stopped."""


class WorkerLostError(TaskqError):
    """The process running the task exited before the task finished."""


class TaskRevokedError(TaskqError):
    """The task was revoked (or expired) and did not run."""


class ChordError(TaskqError):
    """A task in a chord's header failed."""


class TaskControl(Exception):  # noqa: N818 - control flow, not an error
    """Base of the exceptions a task raises to steer the worker; never a failure."""


class Retry(TaskControl):  # noqa: N818
    """Raised by ``Task.retry``: the task is scheduled to run again.

    Attributes:
        exc: the exception that caused the retry, if any.
        when: the ETA (datetime) or countdown (seconds) of the next attempt.
    """

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: datetime | float | None = None,
    ) -> None:
        self.exc = exc
        self.when = when
        super().__init__(message or self._describe())

    def _describe(self) -> str:
        when = f" in {self.when}s" if isinstance(self.when, (int, float)) else ""
        if isinstance(self.when, datetime):
            when = f" at {self.when.isoformat()}"
        cause = f": {self.exc!r}" if self.exc is not None else ""
        return f"Retry{when}{cause}"


class Reject(TaskControl):  # noqa: N818
    """Raised by a task to reject its message (``requeue=True`` puts it back)."""

    def __init__(self, reason: Any = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)


class Ignore(TaskControl):  # noqa: N818
    """Raised by a task so the worker records no state for it."""


def did_you_mean(value: str, known: Iterable[str]) -> str:
    """Return " Did you mean 'x'?" when ``value`` is close to one of ``known``."""
    matches = difflib.get_close_matches(value, list(known), n=1, cutoff=0.6)
    return f" Did you mean {matches[0]!r}?" if matches else ""
