"""``shared_task``: tasks of reusable modules (a Django app's ``tasks.py``) that do
not import the project's app, as Celery's ``@shared_task``.

A shared task is registered on every ``App`` of the process: those that exist when
it is defined and those made later. The object ``@shared_task`` returns stands for
the task of the *current* app: the app made last in the process (each ``App`` makes
itself current, as a Celery app does), or the one given to ``set_current``. So
``add.delay(2, 3)`` in a Django view goes through the project's app, configured in
``proj/celery.py``, without the reusable module importing it.

This is the one place taskq has a notion of a current app; explicit apps
(``@app.task``) never look at it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, Literal, TypeVar, cast, overload

from taskq.errors import ConfigurationError

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.task import P, Task

R = TypeVar("R")

__all__ = ["adopt", "current_app", "current_app_proxy", "set_current", "shared_task"]

_lock = threading.Lock()
_apps: weakref.WeakSet[App] = weakref.WeakSet()
_current: weakref.ref[App] | None = None
#: Every shared task defined so far: (function, options of @shared_task).
_definitions: list[tuple[Callable[..., Any], dict[str, Any]]] = []


def adopt(app: App, *, make_current: bool = True) -> None:
    """Register the shared tasks defined so far on a new ``app`` (``App.__init__``
    calls this) and, unless told not to, make it the current app."""
    with _lock:
        _apps.add(app)
        definitions = list(_definitions)
        if make_current:
            _set_current(app)
    for fn, options in definitions:
        _register(app, fn, options)


def set_current(app: App) -> None:
    """Make ``app`` the app shared tasks stand for (``App.set_current``)."""
    with _lock:
        _set_current(app)


def _set_current(app: App) -> None:
    global _current
    _current = weakref.ref(app)


def current_app() -> App:
    """The app shared tasks stand for.

    Raises:
        ConfigurationError: no App was made in this process (yet).
    """
    app = _current() if _current is not None else None
    if app is None:
        raise ConfigurationError(
            "A shared task was used before any taskq App was made in this process. Make "
            "the project's App at start-up: with Django, import it in proj/__init__.py "
            "(from .celery import app as celery_app), as docs/django.md shows."
        )
    return app


@overload
def shared_task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def shared_task(
    *, bind: Literal[True], name: str | None = None, **options: Any
) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...


@overload
def shared_task(
    *, bind: Literal[False] = False, name: str | None = None, **options: Any
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def shared_task(*fn: Callable[..., Any], **options: Any) -> Any:
    """Define a task on every app: ``@shared_task`` or ``@shared_task(bind=True, ...)``.

    Takes ``@app.task``'s options. Returns a stand-in for the current app's task
    (``current_app().tasks[name]``): ``delay``, ``apply_async``, ``s`` and the rest
    go to it, and calling it runs the function here.
    """
    if len(fn) > 1 or (fn and not callable(fn[0])):
        raise TypeError("@shared_task takes one function; pass options as keywords")

    def define(func: Callable[..., Any]) -> Any:
        with _lock:
            _definitions.append((func, dict(options)))
            apps = list(_apps)
        for app in apps:
            _register(app, func, options)
        return SharedTask(func, options)

    return define(fn[0]) if fn else define


def _register(app: App, fn: Callable[..., Any], options: dict[str, Any]) -> Task[Any, Any]:
    name = options.get("name") or app.task_name_of(fn)
    existing = app.tasks.get(name)
    if existing is not None:  # as Celery: a task already registered under the name stays
        return existing
    register: Callable[[Callable[..., Any]], Task[Any, Any]] = app.task(**options)
    return register(fn)


class SharedTask:
    """The current app's task for a ``@shared_task`` function (see the module doc)."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self._fn = fn
        self._options = options
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", repr(fn))
        self.__module__ = getattr(fn, "__module__", __name__)

    def _task(self) -> Task[Any, Any]:
        app = current_app()
        name = self._options.get("name") or app.task_name_of(self._fn)
        task = app.tasks.get(name)
        return task if task is not None else _register(app, self._fn, self._options)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_fn", "_options"):  # copy, pickle: not ours
            raise AttributeError(name)
        return getattr(self._task(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._task()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<@shared_task: {self.__module__}.{self.__name__}>"


class _CurrentApp:
    """Stands for the current app wherever it is used (Celery's ``current_app``)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(current_app(), name)

    def __repr__(self) -> str:
        return f"<current app: {current_app()!r}>"


#: The current app, as an object (``from taskq import current_app``), for code written
#: against Celery's ``celery.current_app``; prefer passing the app.
current_app_proxy: App = cast("App", _CurrentApp())
