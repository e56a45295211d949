"""What a running task knows about its own invocation (``self.request``).

Below the task and the worker, so both (and the producer, which makes a task sent
from inside a running task its child) read it without importing each other.
"""

from __future__ import annotations

import contextvars
import dataclasses
from datetime import datetime
from typing import Any

__all__ = ["Context", "current_request"]


@dataclasses.dataclass
class Context:
    """What a running task knows about its own invocation (``self.request``)."""

    id: str | None = None
    task: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    retries: int = 0
    hostname: str | None = None
    delivery_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    eta: datetime | None = None
    expires: datetime | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    reply_to: str | None = None
    origin: str | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool = False
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    headers: dict[str, Any] = dataclasses.field(default_factory=dict)
    is_eager: bool = False
    called_directly: bool = True


#: The request of the task running in this thread or asyncio task.
current_request: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "taskq_current_request", default=None
)
