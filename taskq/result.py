"""Task states and ``AsyncResult``: reading a task's state and return value."""

from __future__ import annotations

import enum
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from taskq.errors import ConfigurationError, TaskError, TaskRevokedError

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.backends.base import Backend

R = TypeVar("R")

#: Where a task's state and result are stored: Celery's key, so each reads the other's.
TASK_KEY_PREFIX = "celery-task-meta-"


def task_key(task_id: str) -> str:
    """The result backend key of ``task_id``'s meta."""
    return f"{TASK_KEY_PREFIX}{task_id}"


class State(str, enum.Enum):
    """The built-in task states. Members are strings (``State.SUCCESS == "SUCCESS"``),
    so stored results and custom states (``update_state``) compare with them."""

    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    RETRY = "RETRY"
    REVOKED = "REVOKED"
    #: Outcomes of a run that store nothing: the task raised ``Ignore`` or ``Reject``.
    IGNORED = "IGNORED"
    REJECTED = "REJECTED"

    def __str__(self) -> str:
        return self.value


#: States after which a task's result never changes.
READY_STATES = frozenset({State.SUCCESS, State.FAILURE, State.REVOKED})
#: States whose result is an exception.
EXCEPTION_STATES = frozenset({State.FAILURE, State.RETRY, State.REVOKED})
#: States ``get()`` raises for.
PROPAGATE_STATES = frozenset({State.FAILURE, State.REVOKED})


class states:  # noqa: N801 - mirrors celery.states
    """Celery's ``states`` module: the ``State`` members and the state sets."""

    PENDING = State.PENDING
    RECEIVED = State.RECEIVED
    STARTED = State.STARTED
    SUCCESS = State.SUCCESS
    FAILURE = State.FAILURE
    RETRY = State.RETRY
    REVOKED = State.REVOKED
    IGNORED = State.IGNORED
    REJECTED = State.REJECTED

    READY_STATES = READY_STATES
    EXCEPTION_STATES = EXCEPTION_STATES
    PROPAGATE_STATES = PROPAGATE_STATES


def exception_to_dict(exc: BaseException) -> dict[str, Any]:
    """Celery's JSON form of an exception."""
    cls = type(exc)
    return {
        "exc_type": cls.__qualname__,
        "exc_message": _jsonable_args(exc.args),
        "exc_module": cls.__module__,
    }


def exception_from_dict(data: Any, traceback: str | None = None) -> BaseException:
    """Rebuild an exception from ``exception_to_dict`` output.

    A stored result is data anyone with write access to the backend can forge
    (issue 12), so rebuilding imports nothing and raises nothing it should not: the
    original class is used only when its module is already loaded in this process
    and it is an ``Exception`` subclass (never ``SystemExit``, ``KeyboardInterrupt``
    or ``GeneratorExit``) that builds and prints from the stored arguments. Anything
    else comes back as ``TaskError`` carrying the type name, module, arguments and
    ``traceback``.
    """
    if not isinstance(data, dict) or "exc_type" not in data:
        return TaskError(f"unreadable error result: {_short(data)}", traceback=traceback)
    type_name = str(data["exc_type"])
    module_name = str(data.get("exc_module") or "builtins")
    raw = data.get("exc_message", ())
    args = tuple(raw) if isinstance(raw, (list, tuple)) else (raw,)
    cls = _loaded_exception_class(module_name, type_name)
    if cls is not None:
        try:
            exc = cls(*args)
            str(exc)  # a class that cannot print these arguments is no use to the caller
            return exc
        except Exception:  # it needs other arguments; fall back below
            pass
    message = ", ".join(_short(a) for a in args)
    return TaskError(
        f"{module_name}.{type_name}: {message}",
        exc_type=type_name,
        exc_module=module_name,
        exc_args=args,
        traceback=traceback,
    )


def _loaded_exception_class(module_name: str, type_name: str) -> type[Exception] | None:
    """The ``Exception`` subclass ``module_name.type_name`` when its module is already
    imported. Looks only in namespaces (``vars``), so no import, module
    ``__getattr__`` or descriptor runs."""
    obj: Any = sys.modules.get(module_name)
    for part in type_name.split("."):
        try:
            obj = vars(obj).get(part)
        except TypeError:  # no namespace
            return None
    if isinstance(obj, type) and issubclass(obj, Exception):
        return obj
    return None


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable_args(args: tuple[Any, ...]) -> list[Any]:
    out: list[Any] = []
    for arg in args:
        out.append(arg if isinstance(arg, (str, int, float, bool, type(None))) else repr(arg))
    return out


class AsyncResult(Generic[R]):
    """The state and result of one task, read from the app's result backend.

    Args:
        id: the task id.
        app: the app whose result backend holds the result.
    """

    def __init__(self, id: str, app: App | None = None, parent: AsyncResult[Any] | None = None):
        if app is None:
            raise ConfigurationError(
                f"AsyncResult({id!r}) needs an app: use app.AsyncResult(id) or "
                "AsyncResult(id, app=app). taskq has no global default app."
            )
        self.id = id
        self.app = app
        self.parent = parent
        self._meta: dict[str, Any] | None = None

    task_id = property(lambda self: self.id)

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def backend(self) -> Backend:
        return self.app.results.require()

    def _get_meta(self) -> dict[str, Any]:
        if self._meta is not None:  # ready states never change: keep them
            return self._meta
        meta = self.backend.meta(self.id)
        if meta.get("status") in states.READY_STATES:
            self._meta = meta
        return meta

    @property
    def state(self) -> str:
        """PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED or a custom state."""
        return str(self._get_meta()["status"])

    status = state

    @property
    def result(self) -> Any:
        """The return value, the exception for failed states, or a custom state's meta."""
        return _value(self._get_meta())

    info = result

    @property
    def traceback(self) -> str | None:
        tb = self._get_meta().get("traceback")
        return str(tb) if tb else None

    @property
    def date_done(self) -> datetime | None:
        value = self._get_meta().get("date_done")
        return datetime.fromisoformat(value) if value else None

    @property
    def worker(self) -> str | None:
        return self._get_meta().get("worker")

    @property
    def runtime(self) -> float | None:
        return self._get_meta().get("runtime")

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.05,
    ) -> R:
        """Wait for the task to finish and return its value.

        Args:
            timeout: seconds to wait (None: forever).
            propagate: re-raise the task's exception when it failed or was revoked.
            interval: polling interval for backends that cannot push (Redis pushes).

        Raises:
            TimeoutError: not ready within ``timeout``.
            Exception: the task's own exception (its type when importable,
                otherwise ``TaskError``), when ``propagate`` is true.
        """
        if self._meta is None:
            meta = self.backend.wait_for(self.id, timeout, interval)
            self._meta = meta
        value = _value(self._meta)
        if propagate and self._meta["status"] in states.PROPAGATE_STATES:
            assert isinstance(value, BaseException)
            raise value
        return value  # type: ignore[no-any-return]

    wait = get

    def forget(self) -> None:
        """Remove the stored result."""
        self._meta = None
        self.backend.forget(self.id)

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM") -> None:
        """Ask workers not to run this task (and stop it if ``terminate``)."""
        self.app.control.revoke(self.id, terminate=terminate, signal=signal)


class EagerResult(AsyncResult[R]):
    """The result of a task run in-process (``task_always_eager`` or ``Task.apply``)."""

    def __init__(self, id: str, app: App, meta: dict[str, Any]):
        super().__init__(id, app)
        self._meta = meta

    def get(
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.05
    ) -> R:
        return super().get(timeout, propagate, interval)

    def forget(self) -> None:
        pass


def _value(meta: dict[str, Any]) -> Any:
    status = meta.get("status")
    result = meta.get("result")
    traceback = meta.get("traceback")
    traceback = traceback if isinstance(traceback, str) else None
    if status == states.REVOKED:
        if isinstance(result, dict) and "exc_type" in result:
            return exception_from_dict(result, traceback)
        return TaskRevokedError(f"task {meta.get('task_id')} was revoked")
    if status in states.EXCEPTION_STATES:
        return exception_from_dict(result, traceback)
    return result
