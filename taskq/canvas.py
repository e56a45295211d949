"""Signatures: a task call packed as data, to pass around, store or send later.

A ``Signature`` is a dict in Celery's layout (``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable``), so it is JSON-serialisable and
travels in messages (``link``, ``link_error``) and in ``beat_schedule``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from taskq.errors import ConfigurationError

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.result import AsyncResult
    from taskq.task import Context

log = logging.getLogger("taskq.canvas")


class Signature(dict[str, Any]):
    """``task.s(2, 2)`` / ``signature("proj.add", (2, 2))``: a call not made yet.

    Arguments given when the signature is finally called are prepended to its
    own (so a parent's result becomes the first argument), unless it is
    immutable (``task.si(...)``).
    """

    def __init__(
        self,
        task: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        options: Mapping[str, Any] | None = None,
        immutable: bool = False,
        subtask_type: str | None = None,
        app: App | None = None,
    ) -> None:
        super().__init__(
            task=task,
            args=list(args),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}),
            subtask_type=subtask_type,
            immutable=immutable,
        )
        self.app = app

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: App | None = None) -> Signature:
        if isinstance(data, Signature):
            return data.bound(app) if app is not None else data
        if "task" not in data:
            raise ConfigurationError(f"A signature needs a 'task' name, got {dict(data)!r}.")
        return cls(
            data["task"],
            data.get("args") or (),
            data.get("kwargs") or {},
            options=data.get("options") or {},
            immutable=bool(data.get("immutable", False)),
            subtask_type=data.get("subtask_type"),
            app=app,
        )

    @property
    def task(self) -> str:
        return str(self["task"])

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self["kwargs"])

    @property
    def options(self) -> dict[str, Any]:
        return dict(self["options"])

    @property
    def immutable(self) -> bool:
        return bool(self["immutable"])

    def bound(self, app: App | None) -> Signature:
        copy = self.clone()
        copy.app = app
        return copy

    def clone(
        self, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Signature:
        """A copy with call-time arguments merged in (ignored when immutable)."""
        merged_args, merged_kwargs = self.args, self.kwargs
        if not self.immutable:
            merged_args = tuple(args) + merged_args
            merged_kwargs = {**merged_kwargs, **(kwargs or {})}
        return Signature(
            self.task,
            merged_args,
            merged_kwargs,
            options={**self.options, **options},
            immutable=self.immutable,
            subtask_type=self["subtask_type"],
            app=self.app,
        )

    def set(self, **options: Any) -> Signature:
        """Set call options (``queue``, ``countdown``, ``priority``...) in place; returns self."""
        self["options"] = {**self["options"], **options}
        return self

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send the call; call-time args are prepended unless immutable."""
        if self.app is None:
            raise ConfigurationError(
                f"Signature for {self.task!r} is not bound to an app: build it with "
                "task.s(...) or signature(name, ..., app=app)."
            )
        call = self.clone(tuple(args), kwargs, **options)
        task = self.app.tasks.get(call.task)
        if task is not None:
            return task.apply_async(call.args, call.kwargs, **call.options)
        return self.app.send_task(call.task, call.args, call.kwargs, **call.options)

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task}({args})"


def signature(
    task: str | Mapping[str, Any],
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    app: App | None = None,
    immutable: bool = False,
) -> Signature:
    """Build a signature by task name (or from a dict, as received in a message)."""
    if isinstance(task, Mapping):
        return Signature.from_dict(task, app=app)
    return Signature(task, args, kwargs, options=options, immutable=immutable, app=app)


def on_success(app: App, ctx: Context, value: Any) -> None:
    """Called by the worker after a task succeeded: send its ``link`` callbacks
    with the return value as their first argument."""
    _send_all(app, ctx.callbacks, (value,))


def on_failure(app: App, ctx: Context, exc: BaseException) -> None:
    """Called by the worker after a task failed: send its ``link_error`` callbacks
    with the failed task's id as their first argument."""
    _send_all(app, ctx.errbacks, (ctx.id,))


def _send_all(app: App, sigs: list[dict[str, Any]] | None, args: tuple[Any, ...]) -> None:
    for sig in sigs or ():
        try:
            Signature.from_dict(sig, app=app).apply_async(args)
        except Exception:  # one bad callback must not stop the others
            log.exception("Could not send callback %r", sig)
