"""``Task[P, R]``: a registered function with its options, and its request context."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import random
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar

from taskq.arguments import checker
from taskq.canvas import Signature, chunks, xmap, xstarmap
from taskq.context import Context, current_request
from taskq.errors import ConfigurationError, MaxRetriesExceededError, Retry
from taskq.result import AsyncResult, EagerResult
from taskq.worker.executor import Executor
from taskq.worker.policy import Policies

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.backends.store import ResultStore
    from taskq.producer import Outgoing, Producer

P = ParamSpec("P")
R = TypeVar("R")


@dataclasses.dataclass(eq=False)
class TaskOptions:
    """Per-task options given to ``@app.task(...)``; None means "use the app setting".

    A ``Task`` carries these as attributes (``task.max_retries``, ``task.queue``...).
    """

    queue: str | None = None
    priority: int | None = None
    max_retries: int | None = 3
    default_retry_delay: float = 180.0
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    acks_late: bool | None = None
    reject_on_worker_lost: bool | None = None
    ignore_result: bool | None = None
    track_started: bool | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    rate_limit: str | None = None
    expires: float | datetime | None = None
    serializer: str | None = None
    # Check delay()/apply_async() arguments against the signature (Celery's name).
    typing: bool = True

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))


class Task(TaskOptions, Generic[P, R]):
    """A function registered with an app.

    Calling the task runs the function in this process. ``delay`` and
    ``apply_async`` send it to a worker and return an ``AsyncResult[R]``.
    """

    def __init__(
        self,
        app: App,
        fn: Callable[..., Any],
        *,
        name: str,
        bind: bool = False,
        producer: Producer,
        results: ResultStore,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.app = app
        self._producer = producer
        self._results = results
        self.fn = fn
        self.name = name
        self.bind = bind
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    # -- running ---------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now (no broker, no result stored)."""
        result: R = self.run(*args, **kwargs)
        return result

    def run(self, *args: Any, **kwargs: Any) -> Any:
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    @property
    def request(self) -> Context:
        """The context of the current invocation of this task."""
        return current_request.get() or Context()

    # -- sending ---------------------------------------------------------------------

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments; options go through ``apply_async``."""
        return self.apply_async(args, kwargs)

    def check_arguments(
        self, args: tuple[Any, ...] | list[Any] | None, kwargs: dict[str, Any] | None
    ) -> None:
        """Raise ``TypeError`` naming the task when the arguments do not fit its
        signature (what ``apply_async`` does first unless ``typing=False``)."""
        check = self._argument_checker
        if check is None:
            return
        try:
            check(*(args or ()), **(kwargs or {}))
        except TypeError as exc:
            parameters = [  # names and defaults; annotations may be unevaluated strings
                p.replace(annotation=p.empty)
                for p in inspect.signature(self.fn).parameters.values()
            ]
            shown = inspect.Signature(parameters[1:] if self.bind else parameters)
            raise TypeError(
                f"Task {self.name!r} takes {shown}, so it cannot be sent with args="
                f"{tuple(args or ())!r}, kwargs={dict(kwargs or {})!r}: {exc}. Fix the call "
                "(delay() takes the task's arguments; apply_async() takes args=(...), "
                "kwargs={...}), or set typing=False on the task to send it unchecked."
            ) from None

    @functools.cached_property
    def _argument_checker(self) -> Callable[..., None] | None:
        return checker(self.fn, bound=self.bind)  # made at the first send, once

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """``delay`` once the current Django database transaction commits (at once when
        none is open), as Celery's Django tasks do: a task about a row never runs
        before the row is visible, and nothing is sent if the transaction rolls back.
        Returns None: the task is not sent yet, so there is no result to hand out."""
        _on_commit(lambda: self.apply_async(args, kwargs))

    def apply_async_on_commit(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """``apply_async`` once the current Django transaction commits (see
        ``delay_on_commit``)."""
        _on_commit(lambda: self.apply_async(args, kwargs, **options))

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task to a worker.

        Args:
            args: positional arguments for the task.
            kwargs: keyword arguments for the task.
            **options: ``countdown``, ``eta``, ``expires``, ``queue``, ``priority``,
                ``task_id``, ``headers``, ``serializer``, ``ignore_result``,
                ``retry``, ``retry_policy``, ``link``, ``link_error``,
                ``time_limit``, ``soft_time_limit``.

        Returns:
            The ``AsyncResult`` for the task id.

        Raises:
            BrokerError: the broker did not take the message after the retry policy.
            TypeError: the arguments do not fit the task's signature (unless the
                task has ``typing=False``).
            EncodeError: an argument cannot be serialized; the message names it.
        """
        if self.typing:
            self.check_arguments(args, kwargs)
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        task_id = self._producer.send_task(self.name, args, kwargs, options, task=self)
        return AsyncResult(task_id, app=self.app)

    def delay_many(self, items: Iterable[tuple[Any, ...] | list[Any]]) -> list[AsyncResult[R]]:
        """Send one task per argument tuple, in bulk: ``add.delay_many([(1, 2), (3, 4)])``
        sends what ``add.delay(1, 2)`` and ``add.delay(3, 4)`` send, in a few round trips.

        The plain form of ``group(add.s(1, 2), add.s(3, 4)).apply_async()`` (which also
        takes options, a group id and a ``GroupResult``). Messages go out in chunks
        through the broker's ``publish_many``, each with the publish retry policy; a
        chunk retried after a partial send may queue some messages twice (at least
        once), and none is lost while the policy lasts.

        Returns:
            The ``AsyncResult`` of each call, in order.

        Raises:
            BrokerError: the broker did not take a chunk after the retry policy; the
                chunks before it stay sent.
            TypeError: an item does not fit the task's signature (unless
                ``typing=False``); the chunks before its chunk stay sent, its own is not.
        """
        if self.app.conf.task_always_eager:
            return [self.apply(args) for args in items]
        ids: list[str] = []
        producer = self._producer

        def prepared() -> Iterator[Outgoing]:
            for args in items:
                if self.typing:
                    self.check_arguments(args, None)
                out = producer.prepare(self.name, args, None, {}, task=self)
                ids.append(out.id)
                yield out

        producer.send_many(prepared())
        return [AsyncResult(task_id, app=self.app) for task_id in ids]

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        """Run the task in this process with the worker's state handling
        (retries run again at once) and return an ``EagerResult``."""
        executor = Executor(self.app, Policies({self.name: self}, self.app.conf))
        meta = executor.run_eager(self, tuple(args or ()), dict(kwargs or {}), options)
        return EagerResult(meta["task_id"], self.app, meta)

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """A signature of this task with these arguments (partial, for canvas)."""
        return Signature(self.name, args, kwargs, app=self.app)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """An immutable signature: a parent's result is not prepended to its args."""
        return Signature(self.name, args, kwargs, immutable=True, app=self.app)

    def signature(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        return Signature(self.name, args or (), kwargs or {}, options=options, app=self.app)

    subtask = signature  # Celery's old name for it

    def map(self, items: Iterable[Any]) -> Signature:
        """ONE task (``taskq.map``) that calls this task's function on each item."""
        return xmap(Signature(self.name, app=self.app), items)

    def starmap(self, items: Iterable[Iterable[Any]]) -> Signature:
        """ONE task (``taskq.starmap``) that calls this task's function with each
        item as its arguments."""
        return xstarmap(Signature(self.name, app=self.app), items)

    def chunks(self, items: Iterable[Iterable[Any]], n: int) -> chunks:
        """The items (argument tuples) split into ``taskq.starmap`` tasks of ``n``
        calls each; ``.group()`` makes it a group, ``apply_async`` sends that."""
        return chunks(Signature(self.name, app=self.app), items, n)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:  # noqa: N802 - Celery's name
        return AsyncResult(task_id, app=self.app)

    # -- inside a running task -------------------------------------------------------

    def retry(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> NoReturn:
        """Schedule this task to run again and stop the current run.

        The new attempt is published before the current message is acknowledged,
        so a crash in between runs it at least once. Raises ``Retry`` (which the
        worker records as the RETRY state); when ``max_retries`` is reached,
        re-raises ``exc`` or raises ``MaxRetriesExceededError``.
        """
        request = self.request
        if request.id is None:
            raise RuntimeError(f"{self.name}.retry() called outside of a running task")
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}]: max_retries={limit} exceeded "
                f"(args={request.args!r}, kwargs={request.kwargs!r})."
            )
        if eta is None and countdown is None:
            countdown = self.default_retry_delay
        when: datetime | float | None = eta if eta is not None else countdown
        if not request.is_eager:
            self._producer.send_task(
                self.name,
                request.args if args is None else args,
                request.kwargs if kwargs is None else kwargs,
                {
                    **retry_options(request),
                    "task_id": request.id,
                    "countdown": countdown,
                    "eta": eta,
                    **options,
                },
                task=self,
                retry_of=request,
            )
        raise Retry(exc=exc, when=when)

    def backoff_delay(self, retries: int) -> float:
        """The countdown ``autoretry_for`` uses before attempt ``retries + 1``."""
        backoff = self.retry_backoff
        if not backoff:
            return float(self.retry_kwargs.get("countdown", self.default_retry_delay))
        factor = 1.0 if backoff is True else float(backoff)
        # Capped exponent: a retries count from the wire may be large (2.0**1100 overflows).
        delay = min(self.retry_backoff_max, factor * (2.0 ** min(retries, 64)))
        if self.retry_jitter:
            delay = random.uniform(0, delay)  # noqa: S311 - jitter, not security
        return delay

    def update_state(
        self,
        task_id: str | None = None,
        state: str | None = None,
        meta: Any = None,
    ) -> None:
        """Record a custom state (and meta) for this task, or for ``task_id``."""
        target = task_id or self.request.id
        if target is None:
            raise RuntimeError("update_state needs a task_id outside of a running task")
        self._results.require().store(target, state or "PENDING", meta)


#: Celery's protocol 2 headers: a retry's message gets its own.
_PROTOCOL_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
        "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin",
        "ignore_result",
    }
)  # fmt: skip


def retry_options(request: Context) -> dict[str, Any]:
    """The options a retry of ``request`` is sent with, as Celery's retry keeps them:
    the queue and priority it was delivered with, its own time limits, expiry,
    ``reply_to``, shadow name and the headers its producer added (``stamps``,
    custom headers; not taskq's ``x-`` bookkeeping). The retry call's own options
    override these."""
    headers = request.headers or {}
    options: dict[str, Any] = {
        "queue": request.delivery_info.get("routing_key"),
        "priority": request.delivery_info.get("priority"),
        "expires": request.expires,
        "reply_to": request.reply_to,
        "shadow": headers.get("shadow"),
        "headers": {
            name: value
            for name, value in headers.items()
            if name not in _PROTOCOL_HEADERS and not name.startswith("x-")
        },
    }
    limits = headers.get("timelimit")
    if isinstance(limits, (list, tuple)) and len(limits) == 2:
        options["time_limit"], options["soft_time_limit"] = limits
    return {name: value for name, value in options.items() if value is not None}


def _on_commit(send: Callable[[], object]) -> None:
    """Run ``send`` when Django's current transaction commits."""
    try:
        from django.db import transaction
    except ImportError as exc:
        raise ConfigurationError(
            f"delay_on_commit and apply_async_on_commit wait for a Django transaction, "
            f"but Django does not import ({exc}). Use delay() or apply_async()."
        ) from exc
    transaction.on_commit(send)
