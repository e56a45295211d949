"""Signatures: a task call packed as data, to pass around, store or send later.

A ``Signature`` is a dict in Celery's layout (``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable``), so it is JSON-serialisable and
travels in messages (``link``, ``link_error``, ``chain``, ``chord``) and in
``beat_schedule``. The composite signatures (chain, group, chord, chunks) are
subclasses registered under their ``subtask_type``, so ``Signature.from_dict``
turns a dict read from a message back into the right class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from taskq.errors import ConfigurationError
from taskq.message import new_id
from taskq.result import AsyncResult

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.canvas.primitives import chain

S = TypeVar("S", bound="Signature")

#: subtask_type -> the class that rebuilds such a signature from a dict.
_KINDS: dict[str, type[Signature]] = {}


def register_kind(cls: type[S]) -> type[S]:
    """Class decorator: ``Signature.from_dict`` builds ``cls`` for its ``kind``."""
    assert cls.kind is not None
    _KINDS[cls.kind] = cls
    return cls


class Signature(dict[str, Any]):
    """``task.s(2, 2)`` / ``signature("proj.add", (2, 2))``: a call not made yet.

    Arguments given when the signature is finally called are prepended to its
    own (so a parent's result becomes the first argument), unless it is
    immutable (``task.si(...)``). ``a | b`` builds a chain.
    """

    #: The ``subtask_type`` of this class (None: a plain task call).
    kind: ClassVar[str | None] = None

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
        """The signature for ``data`` (a dict as read from a message), of the class its
        ``subtask_type`` names; a ``Signature`` is returned as is, or bound to ``app``."""
        if isinstance(data, Signature):
            return data if app is None or data.app is app else data.bound(app)
        if not isinstance(data, Mapping) or "task" not in data:
            raise ConfigurationError(f"A signature needs a 'task' name, got {data!r}.")
        subtask_type = data.get("subtask_type")
        if subtask_type in _KINDS:
            return _KINDS[subtask_type].from_mapping(data, app)
        return Signature(
            data["task"],
            data.get("args") or (),
            data.get("kwargs") or {},
            options=data.get("options") or {},
            immutable=bool(data.get("immutable", False)),
            subtask_type=data.get("subtask_type"),
            app=app,
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], app: App | None) -> Signature:
        """Rebuild a signature of this kind from its dict (composite kinds override)."""
        raise NotImplementedError(cls.__name__)

    # -- reading ---------------------------------------------------------------------

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

    @property
    def name(self) -> str:
        """The task's name (Celery's ``sig.name``)."""
        return self.task

    @property
    def subtask_type(self) -> str | None:
        """``chain``, ``group``, ``chord``, ... or None for a plain task call."""
        value = self["subtask_type"]
        return str(value) if value is not None else None

    @property
    def id(self) -> str | None:
        """The task id given with ``set(task_id=...)`` or by ``freeze()``, if any."""
        task_id = self["options"].get("task_id")
        return str(task_id) if task_id is not None else None

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task}({args})"

    # -- building --------------------------------------------------------------------

    def bound(self, app: App | None) -> Signature:
        """A copy bound to ``app`` (children of composite signatures too)."""
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

    def set(self: S, **options: Any) -> S:
        """Set call options (``queue``, ``countdown``, ``priority``...) in place; returns self."""
        self["options"] = {**self["options"], **options}
        return self

    def link(self, callback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run ``callback`` with this call's result when it succeeds; returns ``callback``."""
        self._append_option("link", callback)
        return callback

    def link_error(self, errback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run ``errback`` with the failed task's id when this call fails; returns ``errback``."""
        self._append_option("link_error", errback)
        return errback

    def _append_option(self, name: str, sig: Mapping[str, Any]) -> None:
        self["options"][name] = [*as_list(self["options"].get(name)), sig]

    def set_immutable(self, immutable: bool) -> None:
        """Make the call ignore (True) or take (False) a parent's result."""
        self["immutable"] = bool(immutable)

    def on_error(self, errback: Mapping[str, Any]) -> Signature:
        """``link_error`` that returns this signature, to write ``sig.on_error(e).delay()``."""
        self.link_error(errback)
        return self

    def __or__(self, other: Signature) -> chain:  # type: ignore[override]  # not dict merge
        """``a | b``: a chain where ``b`` gets ``a``'s result."""
        if not isinstance(other, Signature):
            return NotImplemented
        # The chain class registers itself (``register_kind``): importing it here
        # would make the two modules import each other.
        make: Any = _KINDS["chain"]
        return cast("chain", make(self, other, app=self.app or other.app))

    # -- ids, for workflows ----------------------------------------------------------

    def freeze(self) -> AsyncResult[Any]:
        """Give this call its task id now (kept if it has one) and return its result,
        so workflows can hand out results before anything is sent."""
        task_id = self["options"].setdefault("task_id", new_id())
        return AsyncResult(task_id, app=self.require_app())

    def set_id(self, task_id: str) -> None:
        """Make ``task_id`` the id of this call's result (a chain's is its last task's)."""
        self.set(task_id=task_id)

    def join_group(self, group_id: str, index: int, chord: Mapping[str, Any] | None = None) -> None:
        """Make this call member ``index`` of group ``group_id`` (and of the chord whose
        body and size ``chord`` describes): the task whose result stands for the
        member carries them. Composite signatures pass this on to that task."""
        self.set(group_id=group_id, group_index=index)
        if chord is not None:
            self.set(chord=dict(chord))

    def final_ids(self) -> list[str]:
        """The ids of the results that stand for this call, once frozen."""
        return [self.id] if self.id else []

    def require_app(self) -> App:
        if self.app is None:
            raise ConfigurationError(
                f"Signature for {self.task!r} is not bound to an app: build it with "
                "task.s(...) or signature(name, ..., app=app)."
            )
        return self.app

    # -- sending ---------------------------------------------------------------------

    @property
    def type(self) -> Any:
        """The registered task this signature calls (Celery's ``sig.type``).

        Raises:
            NotRegistered: the task is not registered in this process.
        """
        return self.require_app().get_task(self.task)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task here and now, as calling the task does (Celery's rule: calling
        a plain signature is a local call; calling a chain, group or chord sends it).
        Call-time arguments are merged as ``clone`` merges them."""
        call = self.clone(args, kwargs)
        return call.type(*call.args, **call.kwargs)

    def __invert__(self) -> Any:
        """``~sig``: send it and wait for its result (``sig.delay().get()``), as Celery's."""
        return self.apply_async().get()

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Run the call in this process as a worker would (``Task.apply``)."""
        call = self.clone(tuple(args), kwargs)
        result: AsyncResult[Any] = call.type.apply(call.args, call.kwargs, **options)
        return result

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send the call; call-time args are prepended unless immutable.

        ``options`` are ``Task.apply_async``'s; a ``chain`` option is the rest of
        a workflow to run after this call (reversed signature dicts, Celery's
        protocol 2).
        """
        app = self.require_app()
        call = self.clone(tuple(args), kwargs, **options)
        task = app.tasks.get(call.task)
        if task is not None:
            return task.apply_async(call.args, call.kwargs, **call.options)
        task_id = app.producer.send_task(call.task, call.args, call.kwargs, call.options)
        return AsyncResult(task_id, app=app)


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


def maybe_signature(d: Mapping[str, Any] | None, app: App | None = None) -> Signature | None:
    """``d`` as a signature (None stays None), as Celery's ``maybe_signature``."""
    return None if d is None else Signature.from_dict(d, app=app)


#: Celery's old name for ``signature``.
subtask = signature


def as_list(value: Any) -> list[Any]:
    """``None`` -> ``[]``, a list or tuple -> a list, anything else -> ``[value]``."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def first_app(sigs: Iterable[Signature]) -> App | None:
    """The app of the first bound signature, if any."""
    return next((sig.app for sig in sigs if sig.app is not None), None)


def top(result: AsyncResult[Any]) -> AsyncResult[Any]:
    """The first result of a chain of ``.parent`` links."""
    while result.parent is not None:
        result = result.parent
    return result
