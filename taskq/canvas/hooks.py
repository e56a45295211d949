"""What the worker does for workflows after each task: the canvas hooks.

``on_success`` sends the ``link`` callbacks, the next step of a chain, and does
the chord bookkeeping; ``on_failure`` sends the ``link_error`` errbacks, fails
the rest of a chain and fails a chord.

How a chord synchronises: each header task, after its result is stored, adds
its ``group_index`` to the set ``chord-counter-<group id>`` in the result backend
(``Backend.add_member``: Redis SADD+SCARD, one SQL row per member). Adding an
index twice changes nothing, so a header task that runs twice (a worker lost
mid-task, a message redelivered) counts once. The task whose add brings the
set to the header size claims the chord with ``incr("chord-done-<group id>")``;
only the first claim wins, so the body is sent once even when duplicate runs
both see the full set. The winner restores the header's ids (one ``get``),
reads every result (one ``mget``) and sends the body with them. A failing
header task claims the same flag: the body never runs, its result is marked
FAILURE with ``ChordError``, and its errbacks run once.

On the Redis result backend, chords are counted in Celery's keys instead
(``taskq.backends.redis.chord``), so Celery workers and taskq workers can run the
header tasks and the body of each other's chords: each header task adds its
outcome to the chord's sorted set; the one that completes it claims the chord,
reads the outcomes in one call and sends the body (or fails it, if one failed). A
failing header task claims the chord at once and fails the body, as above.

Backend or broker errors while advancing a workflow propagate: the worker then
gives the message back and the task runs again, which is safe because the
counter is idempotent and every step keeps its id. Callback errors are logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from taskq import serialization
from taskq.canvas.results import GroupResult
from taskq.canvas.signature import Signature
from taskq.errors import BackendError, BrokerError, ChordError
from taskq.result import _value, exception_from_dict, exception_to_dict, states

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.backends.base import Backend
    from taskq.backends.chords import ChordKeys
    from taskq.context import Context

log = logging.getLogger("taskq.canvas")


def counter_key(group_id: str) -> str:
    """The set of a chord's finished header tasks (their ``group_index``)."""
    return f"chord-counter-{group_id}"


def done_key(group_id: str) -> str:
    """Incremented by whoever decides a chord (body sent, or failed): first wins."""
    return f"chord-done-{group_id}"


def on_success(app: App, ctx: Context, value: Any) -> None:
    """Called by the worker after a task succeeded and its result was stored.

    Raises:
        BackendError, BrokerError: the chord or chain could not be advanced; the
            worker gives the message back so this runs again.
    """
    with _advancing(ctx, "count it in its chord"):
        if ctx.chord and ctx.group:
            _chord_part_succeeded(app, ctx, value)
    with _advancing(ctx, "send the next step of its chain"):
        if ctx.chain:
            _send_next_step(app, ctx, value)
    _send_all(app, ctx.callbacks, (value,))


def on_failure(app: App, ctx: Context, exc: BaseException) -> None:
    """Called by the worker after a task failed: send its ``link_error`` errbacks
    with the failed task's id, mark the rest of its chain failed with the same
    exception (as Celery does), and fail the chord it belongs to.

    Raises:
        BackendError, BrokerError: as ``on_success``.
    """
    with _advancing(ctx, "report its failure to its workflow"):
        _fail(app, _Failed(ctx.id, ctx.errbacks, ctx.chain, ctx.chord, ctx.group), exc)


@contextlib.contextmanager
def _advancing(ctx: Context, what: str) -> Iterator[None]:
    """Let backend and broker errors through (the message is given back and the task
    runs again); log anything else: a malformed workflow must not loop forever."""
    try:
        yield
    except (BackendError, BrokerError):
        raise
    except Exception:
        log.exception("Task %s[%s]: could not %s", ctx.task, ctx.id, what)


@dataclasses.dataclass
class _Failed:
    """What the failure of a call affects (a task's request, or a body that never ran)."""

    id: str | None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    group: str | None = None


def _fail(app: App, failed: _Failed, exc: BaseException) -> None:
    _send_all(app, failed.errbacks, (failed.id,))
    for data in reversed(failed.chain or []):  # the steps that will now never run
        step = Signature.from_dict(data, app)
        _store_failure(app, step.final_ids(), exc)
        membership = _chord_of(step)
        if membership is not None:
            _fail_chord(app, *membership, failed_id=str(failed.id), exc=exc)
    if failed.chord and failed.group:
        _fail_chord(app, failed.chord, failed.group, failed_id=str(failed.id), exc=exc)


# -- chains and callbacks -----------------------------------------------------------


def _send_next_step(app: App, ctx: Context, value: Any) -> None:
    rest = list(ctx.chain or [])
    step = Signature.from_dict(rest.pop(), app)
    step.apply_async((value,), chain=rest or None, parent_id=ctx.id, root_id=ctx.root_id or ctx.id)


def _send_all(app: App, sigs: list[dict[str, Any]] | None, args: tuple[Any, ...]) -> None:
    for sig in sigs or ():
        try:
            Signature.from_dict(sig, app).apply_async(args)
        except Exception:  # one bad callback must not stop the others
            log.exception("Could not send callback %r", sig)


# -- chords -------------------------------------------------------------------------


def _chord_part_succeeded(app: App, ctx: Context, value: Any) -> None:
    assert ctx.chord is not None and ctx.group is not None
    backend = app.results.require()
    if backend.chords is not None:
        _count_in_celerys_keys(app, backend, backend.chords, ctx, value)
        return
    size = int(ctx.chord.get("chord_size") or 0)
    member = str(ctx.group_index) if ctx.group_index is not None else str(ctx.id)
    if backend.add_member(counter_key(ctx.group), member, backend.expires) < size:
        return
    if backend.incr(done_key(ctx.group), backend.expires) != 1:
        return  # another run of a header task got there first
    try:
        _send_body(app, backend, ctx)
    except (BackendError, BrokerError):
        # Un-claim, so the run of this task that the worker retries can send it.
        _forget_claim(backend, ctx.group)
        raise


def _send_body(app: App, backend: Backend, ctx: Context) -> None:
    assert ctx.chord is not None and ctx.group is not None
    header = GroupResult.restore(ctx.group, app)
    if header is None:
        decide_failure(
            app,
            ctx.chord,
            ChordError(f"chord {ctx.group}: its saved header is missing (expired?)"),
        )
        return
    metas = header.metas()
    values = []
    for result, meta in zip(header.leaves(), metas, strict=True):
        state = meta["status"] if meta else states.PENDING
        if meta is None or state != states.SUCCESS:
            decide_failure(app, ctx.chord, _dependency_error(result.id, state, meta))
            return
        values.append(meta["result"])
    body = Signature.from_dict(ctx.chord, app)
    body.apply_async((values,), parent_id=ctx.id, root_id=ctx.root_id or ctx.id)
    backend.delete(counter_key(ctx.group))  # the done flag keeps late duplicates out


def _count_in_celerys_keys(
    app: App, backend: Backend, chords: ChordKeys, ctx: Context, value: Any
) -> None:
    """A header task succeeded: count it in Celery's keys; decide if that completes it."""
    assert ctx.chord is not None and ctx.group is not None and ctx.id is not None
    # Celery's Redis backend counts [1, task id, state, result], serialized as results are.
    part = serialization.dumps([1, ctx.id, states.SUCCESS, value], backend.serializer)[2]
    size = int(ctx.chord.get("chord_size") or 0)
    counted = chords.add_part(ctx.group, ctx.id, ctx.group_index, part, size_hint=size)
    if counted.token is not None:
        _decide(chords, ctx.group, counted.token, lambda: _join(app, backend, chords, ctx))


def _decide(chords: ChordKeys, group_id: str, token: str, decide: Callable[[], None]) -> None:
    """Run ``decide`` under the claim ``token``; give the claim back if it fails with
    an error the worker retries the task for, so the retried run can claim again."""
    try:
        decide()
    except (BackendError, BrokerError):
        chords.release(group_id, token)
        raise
    chords.finish(group_id, token)


def _join(app: App, backend: Backend, chords: ChordKeys, ctx: Context) -> None:
    """Every header task is counted: send the body with their values in order, or fail
    it with the first failure."""
    assert ctx.chord is not None and ctx.group is not None
    values = []
    for data in chords.parts(ctx.group):
        _, task_id, state, result = serialization.loads_any(
            data, backend.serializer, backend.accept
        )
        if state in states.PROPAGATE_STATES:
            error = ChordError(f"Dependency {task_id} raised {exception_from_dict(result)!r}")
            decide_failure(app, ctx.chord, error)
            return
        values.append(result)
    body = Signature.from_dict(ctx.chord, app)
    body.apply_async((values,), parent_id=ctx.id, root_id=ctx.root_id or ctx.id)


def _dependency_error(task_id: str, state: str, meta: dict[str, Any] | None) -> ChordError:
    if meta is not None and state in states.EXCEPTION_STATES:
        return ChordError(f"Dependency {task_id} raised {_value(meta)!r}")
    hint = " (does the header task ignore its result?)" if state == states.PENDING else ""
    return ChordError(f"Dependency {task_id} is {state}, not SUCCESS{hint}")


def _forget_claim(backend: Backend, group_id: str) -> None:
    try:
        backend.delete(done_key(group_id))
    except BackendError as exc:
        log.error("Could not release chord %s after a failed send: %s", group_id, exc)


def _chord_of(step: Signature) -> tuple[dict[str, Any], str] | None:
    """The chord (body info, group id) a not-yet-run chain step would have reported to."""
    options = step["options"]
    if step.kind is None and options.get("chord") and options.get("group_id"):
        return dict(options["chord"]), str(options["group_id"])
    if step.kind == "chain":
        tasks = step["kwargs"]["tasks"]
        return _chord_of(Signature.from_dict(tasks[-1])) if tasks else None
    return None


def _fail_chord(
    app: App, info: Mapping[str, Any], group_id: str, *, failed_id: str, exc: BaseException
) -> None:
    """Fail the chord once: mark its body failed and run the body's errbacks."""
    backend = app.results.require()
    error = ChordError(f"Dependency {failed_id} raised {exc!r}")
    if backend.chords is not None:
        token = backend.chords.claim(group_id)
        if token is not None:  # else decided already, or being decided
            _decide(backend.chords, group_id, token, lambda: decide_failure(app, info, error))
        return
    if backend.incr(done_key(group_id), backend.expires) != 1:
        return  # decided already: the body was sent, or another member failed first
    decide_failure(app, info, error)


def decide_failure(app: App, info: Mapping[str, Any], error: ChordError) -> None:
    """The body will not run: store ``error`` as its result, then treat it like a
    failed task (its errbacks, the rest of its chain, an enclosing chord)."""
    body = Signature.from_dict(info, app)
    log.error("Chord failed, %s will not run: %s", body, error)
    failed = _failed_call(body)
    ids = [*([failed.id] if failed.id else []), *body.final_ids()]
    _store_failure(app, list(dict.fromkeys(ids)), error)
    _fail(app, failed, error)


def _failed_call(sig: Signature) -> _Failed:
    """What a signature's failure affects when it fails without running."""
    options = sig.options
    if sig.kind == "chain" and sig["kwargs"]["tasks"]:
        first, *rest = [Signature.from_dict(t) for t in sig["kwargs"]["tasks"]]
        failed = _failed_call(first)
        # Last step first: the chain's own continuation, then its steps, then what
        # the first step carried.
        failed.chain = [
            *(options.get("chain") or []),
            *(dict(step) for step in reversed(rest)),
            *(failed.chain or []),
        ]
        failed.errbacks = [*(failed.errbacks or []), *(options.get("link_error") or [])]
        return failed
    ids = sig.final_ids()
    return _Failed(
        id=ids[0] if ids else None,
        errbacks=options.get("link_error"),
        chain=options.get("chain"),
        chord=options.get("chord") if sig.kind is None else None,
        group=options.get("group_id") if sig.kind is None else None,
    )


def _store_failure(app: App, task_ids: list[str], exc: BaseException) -> None:
    backend = app.results.require()
    for task_id in task_ids:
        backend.store(task_id, states.FAILURE, exception_to_dict(exc))
