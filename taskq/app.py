"""``App``: the task registry and the composition root (broker, backend, settings)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, Literal, TypeVar, overload
from zoneinfo import ZoneInfo

from taskq import shared
from taskq.backends.store import ResultStore
from taskq.broker import connect
from taskq.canvas import GroupResult, Signature, register_builtins
from taskq.config import EMBEDDED_FILE, Settings, backend_url_of, broker_url_of
from taskq.context import current_request
from taskq.control import Control
from taskq.discovery import Autodiscovery, Packages
from taskq.errors import ConfigurationError, NotRegistered, did_you_mean
from taskq.producer import Producer
from taskq.result import AsyncResult
from taskq.security import Security
from taskq.signals import Signal
from taskq.task import P, Task, TaskOptions
from taskq.urls import mask_url

if TYPE_CHECKING:
    from taskq.backends.base import Backend
    from taskq.broker.base import Broker

R = TypeVar("R")


class App:
    """A taskq application: where tasks are registered and how they are sent.

    Args:
        main: the name of the main module (used to name tasks defined in ``__main__``).
        broker: broker URL (``redis://``, ``amqp://``, ``sqlite:///file``, ``memory://``).
            With none, broker and results use the embedded SQLite file
            ``./taskq.sqlite3``.
        backend: result backend URL (``redis://``, ``sqlite:///file``, ``memory://``).
        include: modules the worker imports at start.
        set_as_current: make this the app ``@shared_task`` tasks stand for (the
            latest app made is, unless it says False), as in Celery.
        **settings: any setting of ``taskq.config.Settings``, or any Celery setting
            name (see ``taskq.config``).

    The environment variables ``TASKQ_BROKER_URL`` and ``TASKQ_RESULT_BACKEND``
    override the broker and backend. Nothing connects until the first publish.
    """

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        backend: str | None = None,
        include: Sequence[str] = (),
        set_as_current: bool = True,
        **settings: Any,
    ) -> None:
        self.main = main
        #: The folder of the module that created this App (see ``place_embedded``).
        self.home = _creator_folder(self)
        self.conf = Settings()
        self.conf.update(settings)
        if broker is not None:
            self.conf.broker_url = broker
        if backend is not None:
            self.conf.result_backend = backend
        if include:
            self.conf.include = [*self.conf.include, *include]
        self.conf.apply_env()
        self.place_embedded()
        self.tasks: dict[str, Task[Any, Any]] = {}
        #: Signs (and encrypts) messages and results when ``security_keys`` is set.
        self.security = Security(self.conf)
        #: Sends task messages; owns the broker connection (opened on first send).
        self.producer = Producer(self.conf, self.security)
        #: The result backend, opened on first use.
        self.results = ResultStore(self.conf, self.security)
        #: Remote control of workers: ``revoke``, ``inspect()``, ``rate_limit``, ...
        #: (Celery's names; ``taskq.control``).
        self.control = Control(self.results, self.conf, self.security)
        self._periodic: dict[str, dict[str, Any]] = {}
        #: ``autodiscover_tasks`` calls, imported by a worker at start (taskq.loader).
        self.autodiscovery: list[Autodiscovery] = []
        #: Celery's app signals, sent once by ``finalize`` (a worker or beat starting):
        #: the place Celery's docs add periodic tasks (``sender.add_periodic_task``).
        self.on_after_configure: Signal[App] = Signal("on_after_configure", ())
        self.on_after_finalize: Signal[App] = Signal("on_after_finalize", ())
        self._finalized = False
        register_builtins(self)  # taskq.map, taskq.starmap, celery.chord_unlock
        shared.adopt(self, make_current=set_as_current)  # @shared_task tasks

    def __repr__(self) -> str:
        return f"<taskq.App {self.main or '__main__'} broker={mask_url(self.broker_url)}>"

    # -- configuration ---------------------------------------------------------------

    def config_from_object(
        self,
        obj: object | str,
        silent: bool = False,
        force: bool = False,
        namespace: str | None = None,
    ) -> None:
        """Load settings from an object, a module or ``"module:attribute"``, then
        re-apply the environment overrides: ``config_from_object("django.conf:settings",
        namespace="CELERY")`` reads ``CELERY_BROKER_URL`` as ``broker_url`` (see
        ``Settings.from_object``). Settings apply at once (``force`` is accepted for
        Celery's signature); ``silent=True`` ignores a module that does not import."""
        try:
            self.conf.from_object(obj, namespace=namespace)
        except ConfigurationError:
            if not (silent and isinstance(obj, str)):
                raise
        self.conf.apply_env()
        self.place_embedded()

    def place_embedded(self) -> None:
        """Make ``embedded_path`` absolute, relative to ``home``.

        The embedded default's SQLite file is ``taskq.sqlite3`` in the folder of the
        module that created the App (the working directory when it has no file, as
        in a REPL), so a worker and a producer that import the same app module share
        one file wherever each was started. ``embedded_path`` (or
        ``TASKQ_EMBEDDED_PATH``) moves it; a relative value is relative to ``home``
        too. ``App()`` and ``config_from_object`` call this; call it again after
        setting ``app.conf.embedded_path`` to a relative path by hand.
        """
        path = os.path.join(self.home, self.conf.embedded_path or EMBEDDED_FILE)
        self.conf.embedded_path = os.path.normpath(path)

    @property
    def broker_url(self) -> str:
        """The broker URL in use: the configured one or the embedded SQLite file."""
        return broker_url_of(self.conf)

    @property
    def backend_url(self) -> str | None:
        """The result backend URL, or None when results are disabled.

        With no broker configured at all (the embedded default), results live in
        the same SQLite file as the broker.
        """
        return backend_url_of(self.conf)

    # -- tasks -----------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self, *, bind: Literal[True], name: str | None = None, **options: Any
    ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...

    @overload
    def task(
        self, *, bind: Literal[False] = False, name: str | None = None, **options: Any
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, *fn: Callable[..., Any], **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., bind=True, ...)``.

        Options: ``queue``, ``priority``, ``max_retries``, ``default_retry_delay``,
        ``autoretry_for``, ``retry_kwargs``, ``retry_backoff``, ``retry_backoff_max``,
        ``retry_jitter``, ``acks_late``, ``reject_on_worker_lost``, ``ignore_result``,
        ``track_started``, ``time_limit``, ``soft_time_limit``, ``rate_limit``,
        ``expires``, ``serializer``, ``typing`` (default True: ``delay()`` and
        ``apply_async()`` check the arguments against the function's signature and
        raise ``TypeError`` before sending). Registering never connects to anything.
        """
        bind = bool(options.pop("bind", False))
        name: str | None = options.pop("name", None)
        known = TaskOptions.field_names()
        for key in options:
            if key not in known:
                raise ConfigurationError(
                    f"Unknown task option {key!r}.{did_you_mean(key, known)} "
                    f"Known: bind, name, {', '.join(sorted(known))}."
                )

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or self._default_name(func)
            task: Task[Any, Any] = Task(
                self,
                func,
                name=task_name,
                bind=bind,
                producer=self.producer,
                results=self.results,
                **options,
            )
            self.tasks[task_name] = task
            return task

        if len(fn) > 1 or (fn and not callable(fn[0])):
            raise TypeError("@app.task takes one function; pass options as keywords")
        return register(fn[0]) if fn else register

    def set_current(self) -> None:
        """Make this the app ``@shared_task`` tasks stand for (see ``taskq.shared``)."""
        shared.set_current(self)

    set_default = set_current  # Celery's other name for it

    def finalize(self) -> None:
        """Send ``on_after_configure`` then ``on_after_finalize`` (once): a worker and
        beat call this at start, so handlers connected as in Celery's docs run there
        (``@app.on_after_configure.connect def setup(sender, **kwargs):
        sender.add_periodic_task(...)``)."""
        if self._finalized:
            return
        self._finalized = True
        self.on_after_configure.send(self)
        self.on_after_finalize.send(self)

    def config_from_envvar(self, variable_name: str, silent: bool = False) -> bool:
        """``config_from_object`` of the module named by an environment variable.

        Raises:
            ConfigurationError: the variable is not set (unless ``silent``).
        """
        module = os.environ.get(variable_name)
        if not module:
            if silent:
                return False
            raise ConfigurationError(
                f"Environment variable {variable_name!r} is not set: set it to the dotted "
                "name of a configuration module."
            )
        self.config_from_object(module, silent=silent)
        return True

    @property
    def current_task(self) -> Task[Any, Any] | None:
        """The task running in this thread (None outside a task or for another app's)."""
        request = current_request.get()
        return self.tasks.get(request.task or "") if request is not None else None

    @property
    def timezone(self) -> ZoneInfo:
        """The ``timezone`` setting as a ``ZoneInfo``."""
        return ZoneInfo(self.conf.timezone)

    def now(self) -> datetime:
        """The current time in the app's timezone (aware)."""
        return datetime.now(self.timezone)

    def GroupResult(  # noqa: N802 - Celery's name
        self, group_id: str, results: Sequence[AsyncResult[Any]] = ()
    ) -> GroupResult:
        """The results of group ``group_id`` (its members' results)."""
        return GroupResult(group_id, results, app=self)

    def autodiscover_tasks(
        self, packages: Packages = None, related_name: str | None = "tasks", force: bool = False
    ) -> None:
        """Import the ``tasks`` module of each package when a worker starts, as Celery's
        ``autodiscover_tasks``: ``app.autodiscover_tasks()`` (Django's installed apps),
        ``app.autodiscover_tasks(["proj.billing"])`` or a callable returning the names.

        A package without such a module is skipped; one that fails to import stops
        the worker's start-up. ``force=True`` imports them now instead.
        """
        discovery = Autodiscovery(packages, related_name)
        self.autodiscovery.append(discovery)
        if force:
            discovery.import_now()

    def task_name_of(self, func: Callable[..., Any]) -> str:
        """The name ``@app.task`` gives ``func`` when none is given: ``module.function``
        (a function of ``__main__`` takes the app's ``main`` as its module)."""
        return self._default_name(func)

    def _default_name(self, func: Callable[..., Any]) -> str:
        module = func.__module__
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{func.__name__}"

    def get_task(self, name: str) -> Task[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise self.not_registered(name) from None

    def not_registered(self, name: str) -> NotRegistered:
        """The error for a task name this app does not know, saying what to check."""
        known = sorted(task for task in self.tasks if not task.startswith("taskq."))
        return NotRegistered(
            f"Task {name!r} is not registered in app {self.main or '__main__'!r}."
            f"{did_you_mean(name, known)} Registered: {', '.join(known) or '(none)'}. "
            "Check that the module defining it is imported by this process (a worker "
            "imports the -A module, then the modules in include=[...] and imports=[...]) "
            "and that the name sent is the task's name (module path and function name, "
            "e.g. 'proj.tasks.add', or the name= given to @app.task)."
        )

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by name (it need not be registered in this process)."""
        return AsyncResult(self.producer.send_task(name, args, kwargs, options), app=self)

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:  # noqa: N802 - Celery's name
        return AsyncResult(task_id, app=self)

    def signature(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Signature:

        return Signature(name, tuple(args), kwargs, options=options, app=self)

    def add_periodic_task(
        self,
        schedule: Any,
        sig: Signature,
        name: str | None = None,
        **options: Any,
    ) -> None:
        """Add a periodic task from code (merged into ``beat_schedule`` at beat start)."""
        entry_name = name or repr(sig)
        self._periodic[entry_name] = {
            "task": sig.task,
            "schedule": schedule,
            "args": sig.args,
            "kwargs": sig.kwargs,
            "options": {**sig.options, **options},
        }

    @property
    def periodic_tasks(self) -> dict[str, dict[str, Any]]:
        """``beat_schedule`` plus the entries added with ``add_periodic_task``."""
        return {**self.conf.beat_schedule, **self._periodic}

    # -- collaborators ---------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        """The producer's broker connection, opened on first use."""
        return self.producer.broker

    def new_broker(self, consumer_id: str) -> Broker:
        """A fresh broker instance (a worker makes its own, with its consumer id)."""
        return connect(self.conf, consumer_id)

    @property
    def backend(self) -> Backend | None:
        """The result backend, or None when results are disabled."""
        return self.results.backend

    def require_backend(self) -> Backend:
        """The result backend; ``ConfigurationError`` when results are disabled."""
        return self.results.require()

    def reset_connections(self) -> None:
        """Forget the broker and backend connections without closing them, so the
        next use opens new ones. For a forked child process: its inherited sockets
        belong to the parent, and closing them here could close the parent's
        session (an AMQP close frame, a socket shutdown), so the old objects are
        kept referenced and never garbage-collected in this process."""
        self.producer.reset()
        self.results.reset()

    def close(self) -> None:
        """Close the broker and backend connections."""
        self.producer.close()
        self.results.close()


def _creator_folder(app: App) -> str:
    """The absolute folder of the module whose code created ``app`` (skipping the
    ``__init__`` of App subclasses), or the working directory when it has no file."""
    frame = sys._getframe(2)  # the caller of App.__init__
    while frame.f_back is not None and frame.f_locals.get("self") is app:
        frame = frame.f_back  # a subclass's __init__ calling super().__init__
    filename = frame.f_globals.get("__file__")
    return os.path.dirname(os.path.abspath(filename)) if filename else os.getcwd()
