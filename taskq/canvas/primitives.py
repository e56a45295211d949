"""The workflow primitives: ``chain``, ``group`` and ``chord``.

How they travel (Celery's protocol 2):

* A chain sends only its first task. Its message carries the rest of the chain
  in the ``chain`` field (signature dicts, last step first); the worker sends
  the next step with the result and passes the remainder on.
* A group sends every member with the ``group`` header and its ``group_index``.
  A group followed by another step becomes a chord with that step as body.
* A chord saves its header's ids (``GroupResult.save``) and sends the header
  tasks, each carrying the chord (the body signature and the header size) in
  the ``chord`` field: one small dict per message, never the whole header. The
  worker counts finished members and sends the body (see ``canvas.hooks``).

Every id is assigned before anything is sent (``freeze``), so the result of a
chain is its last task's, and ``.parent`` walks back to the first.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from taskq.canvas.results import GroupResult
from taskq.canvas.signature import Signature, as_list, first_app, register_kind, top
from taskq.errors import ConfigurationError
from taskq.result import AsyncResult

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.producer import Outgoing

#: Options that place a call in a group or chord; composites pass them to one task.
_MEMBERSHIP = ("group_id", "group_index", "chord")


def _worker_app(sig: Signature) -> App:
    """The app that sends ``sig``: workflows need workers, not the eager mode."""
    app = sig.require_app()
    if app.conf.task_always_eager:
        # The eager path runs one task and knows nothing of the rest of a workflow:
        # better to say so than to hand out results that never arrive.
        raise ConfigurationError(
            f"A {sig.kind} cannot run with task_always_eager=True. In tests, send it "
            "and run a worker: taskq.testing.run_until_empty(app)."
        )
    return app


def _signatures(items: tuple[Any, ...], app: App | None) -> list[Signature]:
    """``f(a, b)`` and ``f([a, b])`` both mean the signatures a and b."""
    if len(items) == 1 and not isinstance(items[0], Mapping):
        items = tuple(items[0])
    return [Signature.from_dict(item, app) for item in items]


class _TaskList(Signature):
    """What chain and group share: a list of signatures in ``kwargs["tasks"]``,
    sent as Celery's ``celery.chain`` / ``celery.group`` so both travel as data."""

    def __init__(
        self,
        *tasks: Mapping[str, Any] | Iterable[Mapping[str, Any]],
        options: Mapping[str, Any] | None = None,
        app: App | None = None,
    ) -> None:
        items = _signatures(tasks, app)
        super().__init__(
            f"celery.{self.kind}",
            (),
            {"tasks": items},
            options=options,
            subtask_type=self.kind,
            app=app or first_app(items),
        )

    @classmethod
    def from_mapping(cls: type[_L], data: Mapping[str, Any], app: App | None) -> _L:
        return cls(
            (data.get("kwargs") or {}).get("tasks") or [], options=data.get("options"), app=app
        )

    @property
    def tasks(self) -> list[Signature]:
        items: list[Signature] = self["kwargs"]["tasks"]
        return items

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        raise _runs_on_workers(self)


def _runs_on_workers(sig: Signature) -> ConfigurationError:
    return ConfigurationError(
        f"A {sig.kind} runs on workers, not in this process: send it with "
        f"apply_async() (or call it), and in tests run a worker: "
        "taskq.testing.run_until_empty(app)."
    )


_L = TypeVar("_L", bound=_TaskList)


@register_kind
class chain(_TaskList):  # noqa: N801 - Celery's name
    """Tasks run one after the other, each getting the previous result as its
    first argument: ``chain(a, b, c)``, ``chain([a, b, c])`` or ``a | b | c``.

    ``apply_async`` returns the last task's result. Call options (``queue``,
    ``countdown``...) apply to the first task, ``link`` to the last and
    ``link_error`` to every task, as in Celery.
    """

    kind = "chain"

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.tasks)) or "chain()"

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        """Send the chain, as Celery's ``chain(...)()``: ``args`` and ``kwargs`` go to its
        first task; returns the last task's result."""
        return self.apply_async(args, kwargs)

    def __or__(self, other: Signature) -> chain:  # type: ignore[override]  # not dict merge
        if not isinstance(other, Signature):
            return NotImplemented
        more = other.tasks if isinstance(other, chain) and not other.options else [other]
        return chain(*self.tasks, *more, options=self.options, app=self.app or other.app)

    def clone(
        self, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> chain:
        steps = [step.clone() for step in self.tasks]
        if steps and (args or kwargs):
            steps[0] = steps[0].clone(args, kwargs)
        return chain(*steps, options={**self.options, **options}, app=self.app)

    def freeze(self) -> AsyncResult[Any]:
        return _freeze_steps(self.tasks)

    def set_id(self, task_id: str) -> None:
        self._last().set_id(task_id)

    def join_group(self, group_id: str, index: int, chord: Mapping[str, Any] | None = None) -> None:
        self._last().join_group(group_id, index, chord)

    def final_ids(self) -> list[str]:
        return self._last().final_ids()

    def _last(self) -> Signature:
        if not self.tasks:
            raise ConfigurationError("A chain needs at least one task.")
        return self.tasks[-1]

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send the first task with the rest of the chain; return the last task's result."""
        app = _worker_app(self)
        call = self.clone(tuple(args), kwargs)
        opts = {**call.options, **options}
        # The rest of an enclosing workflow runs after this chain's last task.
        rest = [Signature.from_dict(d, app) for d in reversed(opts.pop("chain", None) or [])]
        steps = [*call.tasks, *rest]
        last = call._last()
        if "task_id" in opts:
            last.set_id(opts.pop("task_id"))
        for callback in as_list(opts.pop("link", None)):
            last.link(callback)
        for errback in as_list(opts.pop("link_error", None)):
            for step in call.tasks:
                step.link_error(errback)
        if opts.get("group_id") is not None:
            last.join_group(opts["group_id"], opts.get("group_index") or 0, opts.get("chord"))
        for name in _MEMBERSHIP:
            opts.pop(name, None)
        result = _freeze_steps(call.tasks)
        for step in rest:  # frozen where they were added; this only checks they are
            step.freeze()
        first, after = steps[0], steps[1:]
        first.apply_async(chain=[dict(s) for s in reversed(after)] or None, **opts)
        return result


def _freeze_steps(steps: list[Signature]) -> AsyncResult[Any]:
    """Freeze a chain's steps in place, each result's ``.parent`` the previous step's."""
    if not steps:
        raise ConfigurationError("A chain needs at least one task.")
    results = [step.freeze() for step in steps]
    for before, after in zip(results, results[1:], strict=False):
        top(after).parent = before
    return results[-1]


@register_kind
class group(_TaskList):  # noqa: N801 - Celery's name
    """Tasks run in parallel: ``group(a, b)`` or ``group(sig for ...)``.

    ``apply_async`` returns a ``GroupResult``. Call options apply to every
    member; ``link_error`` too. A group takes no ``link``: use a chord.
    """

    kind = "group"

    def __repr__(self) -> str:
        return f"group([{', '.join(map(repr, self.tasks))}])"

    def __call__(self, *args: Any, **options: Any) -> GroupResult:
        """Send the group, as Celery's ``group(...)()``: ``args`` are prepended to each
        member's, ``options`` are call options; returns the ``GroupResult``."""
        return self.apply_async(args, **options)

    def skew(self, start: float = 1.0, stop: float | None = None, step: float = 1.0) -> group:
        """Spread the members out in time: countdown ``start``, ``start + step``, ...
        (at most ``stop``), as Celery's ``group.skew``. Returns the group."""
        countdown = start
        for member in self.tasks:
            member.set(countdown=countdown)
            countdown += step
            if stop is not None:
                countdown = min(countdown, stop)
        return self

    def clone(
        self, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> group:
        members = [member.clone(args, kwargs) for member in self.tasks]
        return group(*members, options={**self.options, **options}, app=self.app)

    def freeze(self) -> GroupResult:
        group_id = self["options"].setdefault("group_id", str(uuid.uuid4()))
        results = []
        for index, member in enumerate(self.tasks):
            member.join_group(group_id, index)
            results.append(member.freeze())
        return GroupResult(group_id, results, app=self.require_app())

    def set_id(self, task_id: str) -> None:
        self.set(group_id=task_id)

    def join_group(self, group_id: str, index: int, chord: Mapping[str, Any] | None = None) -> None:
        # A group in a group keeps its own id (its result is a nested GroupResult); in
        # a chord's header groups are flattened before this is called.
        if chord is not None:
            raise ConfigurationError(
                "A group cannot end a chain inside a chord's header: put a task after it."
            )

    def final_ids(self) -> list[str]:
        return [task_id for member in self.tasks for task_id in member.final_ids()]

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """Send every member (call-time args go to each); return the ``GroupResult``."""
        app = _worker_app(self)
        call = self.clone(tuple(args), kwargs)
        opts = {**call.options, **options}
        rest = list(opts.pop("chain", None) or [])
        if rest:  # more steps follow: a chord with the next one as body
            body = Signature.from_dict(rest.pop(), app)
            if rest:
                body.set(chain=rest)
            header, _ = apply_chord(app, call, body, opts)
            return header
        if opts.pop("link", None):
            raise ConfigurationError(
                "A group cannot take link=: to run a task after every member finished, "
                "use chord(group, callback) or group | callback."
            )
        if "task_id" in opts:
            call.set_id(opts.pop("task_id"))
        errbacks = as_list(opts.pop("link_error", None))
        for name in _MEMBERSHIP:
            opts.pop(name, None)
        result = call.freeze()
        for member in call.tasks:
            for errback in errbacks:
                member.link_error(errback)
        _send_members(app, call.tasks, opts)
        return result


@register_kind
class chord(Signature):  # noqa: N801 - Celery's name
    """A group whose results, in order, are passed to a body task once every
    member succeeded: ``chord(header, body)``. The body runs exactly once; if a
    member fails, the body does not run and its result fails with ``ChordError``.

    ``apply_async`` returns the body's result (its ``.parent`` is the header's
    ``GroupResult``). Call options apply to the header tasks; ``task_id``,
    ``link`` and ``link_error`` to the body.
    """

    kind = "chord"

    def __init__(
        self,
        header: Mapping[str, Any] | Iterable[Mapping[str, Any]],
        body: Mapping[str, Any] | None = None,
        *,
        options: Mapping[str, Any] | None = None,
        app: App | None = None,
    ) -> None:
        head = (
            Signature.from_dict(header, app)
            if isinstance(header, Mapping)
            else group(list(header), app=app)
        )
        if not isinstance(head, group):
            head = group(head, app=app)
        # Celery's chord(header)(body): the body may come when the chord is called.
        tail = Signature.from_dict(body, app) if body is not None else None
        super().__init__(
            "celery.chord",
            (),
            {"header": head, "body": tail, "kwargs": {}},
            options=options,
            subtask_type="chord",
            app=app or head.app or (tail.app if tail is not None else None),
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], app: App | None) -> chord:
        kwargs = data.get("kwargs") or {}
        return cls(kwargs["header"], kwargs["body"], options=data.get("options"), app=app)

    @property
    def header(self) -> group:
        head: group = self["kwargs"]["header"]
        return head

    @property
    def body(self) -> Signature:
        tail: Signature | None = self["kwargs"]["body"]
        if tail is None:
            raise ConfigurationError(
                "This chord has no body yet: give it one, chord(header, body) or "
                "chord(header)(body)."
            )
        return tail

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self['kwargs']['body']!r})"

    def __call__(self, body: Mapping[str, Any] | None = None, **options: Any) -> AsyncResult[Any]:
        """Send the chord, as Celery's ``chord(header)(body)`` and ``chord(header, body)()``:
        returns the body's result."""
        sig = self if body is None else chord(self.header, body, options=self.options, app=self.app)
        return sig.apply_async(**options)

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        raise _runs_on_workers(self)

    def clone(
        self, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> chord:
        tail = self["kwargs"]["body"]
        return chord(
            self.header.clone(args, kwargs),
            tail.clone() if tail is not None else None,
            options={**self.options, **options},
            app=self.app,
        )

    def freeze(self) -> AsyncResult[Any]:
        header = self.header.freeze()
        body = self.body.freeze()
        top(body).parent = header
        return body

    def set_id(self, task_id: str) -> None:
        self.body.set_id(task_id)

    def join_group(self, group_id: str, index: int, chord: Mapping[str, Any] | None = None) -> None:
        self.body.join_group(group_id, index, chord)

    def final_ids(self) -> list[str]:
        return self.body.final_ids()

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send the header (call-time args go to each header task); return the body's result."""
        app = _worker_app(self)
        call = self.clone(tuple(args), kwargs)
        opts = {**call.options, **options}
        body = call.body
        rest = opts.pop("chain", None)
        if rest:  # in a chain: the steps after the chord run after its body
            body.set(chain=rest)
        _, result = apply_chord(app, call.header, body, opts)
        return result


def apply_chord(
    app: App, header: group, body: Signature, opts: dict[str, Any]
) -> tuple[GroupResult, AsyncResult[Any]]:
    """Freeze and save the header, then send its tasks, each carrying the chord."""
    opts = dict(opts)
    if "task_id" in opts:
        body.set_id(opts.pop("task_id"))
    for callback in as_list(opts.pop("link", None)):
        body.link(callback)
    for errback in as_list(opts.pop("link_error", None)):
        body.link_error(errback)
    group_id = opts.pop("group_id", None) or header["options"].get("group_id") or str(uuid.uuid4())
    for name in _MEMBERSHIP:
        opts.pop(name, None)
    members = _flatten(header)
    body_result = body.freeze()
    info = {**body, "chord_size": len(members)}
    results = []
    for index, member in enumerate(members):
        member.join_group(group_id, index, info)
        results.append(member.freeze())
    header_result = GroupResult(group_id, results, app=app)
    top(body_result).parent = header_result
    chords = app.results.require().chords
    if chords is not None:  # Celery's keys (Redis): Celery workers need the size
        if members:
            chords.set_size(group_id, len(members))
    else:
        header_result.save()
    if not members:  # Celery's rule: an empty header calls the body with []
        body.apply_async(([],), **{k: v for k, v in opts.items() if k in ("parent_id", "root_id")})
    _send_members(app, members, opts)
    return header_result, body_result


def _send_members(app: App, members: list[Signature], opts: Mapping[str, Any]) -> None:
    """Send a group's or a chord header's members, each with the call options ``opts``.

    Task calls of ``app`` go out together through ``Producer.send_many`` (on Redis,
    one pipeline a thousand messages; see there for its at-least-once retries).
    Workflows among the members (chains, chords, groups) and calls bound to another
    app are sent by their own ``apply_async``.
    """
    calls = []
    for member in members:
        if type(member) is Signature and member.app is app:
            calls.append(member)
        else:
            member.apply_async(**opts)
    app.producer.send_many(_prepare(app, call, opts) for call in calls)


def _prepare(app: App, call: Signature, opts: Mapping[str, Any]) -> Outgoing:
    """What ``call.apply_async(**opts)`` would publish (``Signature.apply_async``)."""
    options = {**call["options"], **opts}
    task = app.tasks.get(call.task)
    return app.producer.prepare(call.task, call["args"], call["kwargs"], options, task=task)


def _flatten(header: group) -> list[Signature]:
    """A chord's header tasks, groups inside it flattened (their results count one by one)."""
    members: list[Signature] = []
    for member in header.tasks:
        members.extend(_flatten(member) if isinstance(member, group) else [member])
    return members
