"""``map``, ``starmap`` and ``chunks``: many calls of one task in few messages.

``task.map(items)`` and ``task.starmap(items)`` are ONE message: the built-in
tasks ``taskq.map`` / ``taskq.starmap`` (registered on every app) call the
function for each item in the worker. ``task.chunks(items, n)`` splits the items
into starmap tasks of ``n`` calls each, sent as a group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from taskq.canvas.primitives import group
from taskq.canvas.results import GroupResult
from taskq.canvas.signature import Signature, register_kind
from taskq.canvas.unlock import register_chord_unlock
from taskq.errors import ConfigurationError
from taskq.result import AsyncResult

if TYPE_CHECKING:
    from taskq.app import App


@register_kind
class chunks(Signature):  # noqa: N801 - Celery's name
    """``task.chunks(items, n)``: the items (argument tuples) split into tasks of
    ``n`` calls each. ``apply_async`` runs them as a group (``.group()``) and
    returns its ``GroupResult``: a list of lists of values.
    """

    kind = "chunks"

    def __init__(
        self,
        task: Mapping[str, Any],
        it: Iterable[Iterable[Any]],
        n: int,
        *,
        options: Mapping[str, Any] | None = None,
        app: App | None = None,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigurationError(f"chunks() needs a chunk size n >= 1, got {n!r}.")
        sig = Signature.from_dict(task, app)
        super().__init__(
            "celery.chunks",
            (),
            {"task": sig, "it": [list(item) for item in it], "n": n},
            options=options,
            subtask_type="chunks",
            app=app or sig.app,
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], app: App | None) -> chunks:
        kwargs = data.get("kwargs") or {}
        return cls(
            kwargs["task"], kwargs["it"], int(kwargs["n"]), options=data.get("options"), app=app
        )

    def clone(
        self, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> chunks:
        body = self["kwargs"]
        return chunks(
            Signature.from_dict(body["task"]).clone(),
            body["it"],
            body["n"],
            options={**self.options, **options},
            app=self.app,
        )

    def group(self) -> group:
        """The group of ``taskq.starmap`` tasks, one per chunk."""
        task: Signature = Signature.from_dict(self["kwargs"]["task"], self.app)
        items: list[Any] = self["kwargs"]["it"]
        n: int = self["kwargs"]["n"]
        parts = [xstarmap(task, items[i : i + n]) for i in range(0, len(items), n)]
        return group(parts, options=self.options, app=self.app)

    def freeze(self) -> AsyncResult[Any]:
        raise ConfigurationError(
            "chunks cannot be part of a chain or chord as they are: use chunks(...).group()."
        )

    def __call__(self, **options: Any) -> GroupResult:
        """Send the chunks as a group, as Celery's ``add.chunks(items, 10)()``."""
        return self.apply_async(**options)

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        raise ConfigurationError(
            "chunks run on workers, not in this process: send them with apply_async() "
            "(or call them), and in tests run a worker: taskq.testing.run_until_empty(app)."
        )

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        return self.group().apply_async(args, kwargs, **options)


def xmap(task: Mapping[str, Any], it: Iterable[Any]) -> Signature:
    """``task.map(items)``: ONE task (``taskq.map``) calling ``task`` on each item in turn."""
    sig = Signature.from_dict(task)
    return Signature(
        "taskq.map", (), {"task": dict(sig), "it": list(it)}, subtask_type="xmap", app=sig.app
    )


def xstarmap(task: Mapping[str, Any], it: Iterable[Iterable[Any]]) -> Signature:
    """``task.starmap(items)``: ONE task (``taskq.starmap``) calling ``task(*item)`` for each."""
    sig = Signature.from_dict(task)
    items = [list(item) for item in it]
    return Signature(
        "taskq.starmap", (), {"task": dict(sig), "it": items}, subtask_type="xstarmap", app=sig.app
    )


def _backend_cleanup() -> None:
    """Celery beat sends ``celery.backend_cleanup`` daily; taskq's backends expire
    results by themselves (Redis TTLs, the SQL backends' own sweep), so nothing to do."""


def register_builtins(app: App) -> None:
    """Register the tasks every app has: ``taskq.map``, ``taskq.starmap``,
    ``celery.chord_unlock`` (``taskq.canvas.unlock``), and Celery's ``celery.map``,
    ``celery.starmap`` and ``celery.backend_cleanup``.

    Both run the mapped task's function in the worker process, item after item
    (the signature's own arguments follow each item's), and return the list of
    values, as Celery's ``celery.map`` / ``celery.starmap`` do.
    """

    def run_map(task: dict[str, Any], it: list[Any]) -> list[Any]:
        sig = Signature.from_dict(task, app)
        target = app.get_task(sig.task)
        return [target.run(item, *sig.args, **sig.kwargs) for item in it]

    def run_starmap(task: dict[str, Any], it: list[list[Any]]) -> list[Any]:
        sig = Signature.from_dict(task, app)
        target = app.get_task(sig.task)
        return [target.run(*item, *sig.args, **sig.kwargs) for item in it]

    app.task(name="taskq.map")(run_map)
    app.task(name="taskq.starmap")(run_starmap)
    # Celery's built-in names, so Celery producers' messages run on taskq workers.
    app.task(name="celery.map")(run_map)
    app.task(name="celery.starmap")(run_starmap)
    app.task(name="celery.backend_cleanup", ignore_result=True)(_backend_cleanup)
    register_chord_unlock(app)
