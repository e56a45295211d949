"""The remote control commands a worker answers, with Celery's names, arguments
and replies.

Each command is a function of a ``WorkerHandle`` and the command's keyword
arguments. ``dispatch`` looks the command up, checks the arguments against its
signature and runs it: an unknown command, a wrong argument or a
``CommandError`` comes back as ``{"error": "..."}`` saying what was wrong, and no
command can raise into the control server. ``Command.args`` and
``Command.variadic`` say how a command line (``taskq control rate_limit
proj.add 10/m``) maps to the arguments, as Celery's ``control`` command does.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import platform
import signal as signal_module
import sys
from collections.abc import Callable, Sequence
from typing import Any

import kombu

from taskq.control.handle import CommandError, WorkerHandle
from taskq.control.revokes import signal_number
from taskq.errors import ConfigurationError, did_you_mean
from taskq.version import __version__

log = logging.getLogger("taskq.control")

INSPECT, CONTROL = "inspect", "control"


@dataclasses.dataclass(frozen=True)
class Command:
    """One command: its kind, what it runs, and how a command line fills it in.

    Attributes:
        name: Celery's name for it.
        kind: ``"inspect"`` (reads) or ``"control"`` (changes something).
        run: ``run(handle, **arguments)`` -> the reply.
        help: one line for ``--help``.
        args: the positional command-line arguments, in order, with their types.
        variadic: the argument that takes every remaining command-line word.
        timeout: seconds a client waits for replies by default.
    """

    name: str
    kind: str
    run: Callable[..., Any]
    help: str
    args: tuple[tuple[str, Callable[[str], Any]], ...] = ()
    variadic: str | None = None
    timeout: float = 1.0

    @property
    def signature(self) -> str:
        words = [f"<{name}>" for name, _ in self.args]
        if self.variadic:
            words.append(f"[{self.variadic} ...]")
        return " ".join(words)

    def parse(self, words: Sequence[str]) -> dict[str, Any]:
        """Arguments from command-line words.

        Raises:
            ConfigurationError: a word of the wrong type, or too many words.
        """
        arguments: dict[str, Any] = {}
        rest = list(words)
        for name, kind in self.args:
            if not rest:
                break
            word = rest.pop(0)
            try:
                arguments[name] = kind(word)
            except ValueError:
                raise ConfigurationError(
                    f"{self.name}: {name} must be {kind.__name__}, got {word!r}. "
                    f"Usage: {self.name} {self.signature}"
                ) from None
        if rest:
            if not self.variadic:
                raise ConfigurationError(
                    f"{self.name} takes at most {len(self.args)} argument(s), got "
                    f"{len(words)}: {' '.join(words)}. Usage: {self.name} {self.signature}"
                )
            arguments[self.variadic] = rest
        return arguments


COMMANDS: dict[str, Command] = {}
#: Celery's older names.
ALIASES = {
    "dump_active": "active",
    "dump_reserved": "reserved",
    "dump_schedule": "scheduled",
    "dump_tasks": "registered",
    "dump_revoked": "revoked",
    "dump_conf": "conf",
}


def _command(
    kind: str,
    args: tuple[tuple[str, Callable[[str], Any]], ...] = (),
    variadic: str | None = None,
    timeout: float = 1.0,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        COMMANDS[fn.__name__] = Command(fn.__name__, kind, fn, doc, args, variadic, timeout)
        return fn

    return register


def lookup(name: str) -> Command:
    """The command called ``name`` (or one of Celery's older names).

    Raises:
        CommandError: no such command.
    """
    command = COMMANDS.get(ALIASES.get(name, name))
    if command is None:
        raise CommandError(
            f"Unknown control command {name!r}.{did_you_mean(name, COMMANDS)} "
            f"Known: {', '.join(sorted(COMMANDS))}."
        )
    return command


def dispatch(handle: WorkerHandle, method: str, arguments: dict[str, Any]) -> Any:
    """Run ``method`` for ``handle``; every failure becomes ``{"error": ...}``."""
    try:
        command = lookup(method)
        inspect.signature(command.run).bind(handle, **arguments)
    except CommandError as exc:
        return {"error": str(exc)}
    except TypeError as exc:
        return {
            "error": f"Bad arguments for {method!r}: {exc}. Usage: {method} {command.signature}"
        }
    try:
        return command.run(handle, **arguments)
    except (CommandError, ConfigurationError) as exc:
        return {"error": str(exc)}
    except Exception as exc:
        log.exception("Control command %r failed", method)
        return {"error": f"{method} failed: {exc!r}"}


def ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


def _bool(word: str) -> bool:
    lowered = word.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(word)


_bool.__name__ = "bool"


# -- inspect ------------------------------------------------------------------------------


@_command(INSPECT, timeout=0.2)
def ping(handle: WorkerHandle, **_: Any) -> Any:
    """Ping worker(s)."""
    return ok("pong")


@_command(INSPECT)
def clock(handle: WorkerHandle, **_: Any) -> Any:
    """Get the worker's logical clock value."""
    return {"clock": handle.clock()}


@_command(INSPECT, args=(("from_node", str),))
def hello(handle: WorkerHandle, from_node: str, revoked: list[str] | None = None, **_: Any) -> Any:
    """Greet a worker that starts (Celery's mingle): share revoked ids and the clock."""
    if from_node == handle.hostname:
        return None
    if isinstance(revoked, list) and all(isinstance(i, str) for i in revoked):
        handle.revoke(revoked, False, int(signal_module.SIGTERM))
    return {"revoked": handle.revoked(), "clock": handle.clock()}


@_command(INSPECT, args=(("safe", _bool),))
def active(handle: WorkerHandle, safe: bool | None = False, **_: Any) -> Any:
    """List the tasks running now."""
    return [info.as_celery(bool(safe)) for info in handle.active()]


@_command(INSPECT, args=(("safe", _bool),))
def reserved(handle: WorkerHandle, safe: bool | None = False, **_: Any) -> Any:
    """List the tasks received and waiting to run."""
    return [info.as_celery(bool(safe)) for info in handle.reserved()]


@_command(INSPECT, args=(("safe", _bool),))
def scheduled(handle: WorkerHandle, safe: bool | None = False, **_: Any) -> Any:
    """List the tasks held until their ETA."""
    return [
        {"eta": s.eta, "priority": s.priority, "request": s.task.as_celery(bool(safe))}
        for s in handle.scheduled()
    ]


@_command(INSPECT)
def stats(handle: WorkerHandle, **_: Any) -> Any:
    """Worker statistics: pool, totals, broker, rusage, events."""
    return handle.stats()


@_command(INSPECT, variadic="taskinfoitems")
def registered(handle: WorkerHandle, taskinfoitems: Sequence[str] | None = None, **_: Any) -> Any:
    """List the registered tasks (with the attributes named, default rate_limit)."""
    items = [i for i in (taskinfoitems or ("rate_limit",)) if not str(i).startswith("_")]
    out = []
    for name, attributes in sorted(handle.registered().items()):
        shown = [f"{k}={attributes[k]}" for k in items if attributes.get(k) is not None]
        out.append(f"{name} [{' '.join(shown)}]" if shown else name)
    return out


@_command(INSPECT)
def revoked(handle: WorkerHandle, **_: Any) -> Any:
    """List the task ids revoked through remote control."""
    return handle.revoked()


@_command(INSPECT)
def active_queues(handle: WorkerHandle, **_: Any) -> Any:
    """List the queues the worker consumes."""
    return [
        kombu.Queue(name, kombu.Exchange(name, "direct"), routing_key=name).as_dict(recurse=True)
        for name in handle.queues()
    ]


@_command(INSPECT, args=(("with_defaults", _bool),))
def conf(handle: WorkerHandle, with_defaults: bool = False, **_: Any) -> Any:
    """The worker's settings (changed ones only, unless with_defaults), passwords masked."""
    return handle.conf(bool(with_defaults))


@_command(INSPECT, variadic="ids")
def query_task(handle: WorkerHandle, ids: Sequence[str] | str = (), **_: Any) -> Any:
    """Where the worker holds the given task ids: active, reserved or scheduled."""
    wanted = {ids} if isinstance(ids, str) else set(ids)
    found: dict[str, Any] = {}
    for state, infos in (
        ("active", handle.active()),
        ("reserved", handle.reserved()),
        ("scheduled", [s.task for s in handle.scheduled()]),
    ):
        for info in infos:
            if info.id in wanted and info.id not in found:
                found[info.id] = [state, info.as_celery()]
    return found


@_command(INSPECT)
def report(handle: WorkerHandle, **_: Any) -> Any:
    """Software, platform and settings, for a bug report."""
    settings = handle.conf(False)
    lines = [
        f"software -> taskq:{__version__} kombu:{kombu.__version__} py:{platform.python_version()}",
        f"            platform -> system:{platform.system()} arch:{platform.machine()} "
        f"imp:{platform.python_implementation()}",
        f"loader   -> taskq ({sys.executable}, pid {os.getpid()})",
        f"settings -> broker:{settings.get('broker_url')} results:{settings.get('result_backend')}",
        "",
        *(f"{k}: {v!r}" for k, v in sorted(settings.items())),
    ]
    return ok("\n".join(lines))


# -- control ------------------------------------------------------------------------------


@_command(CONTROL)
def enable_events(handle: WorkerHandle, **_: Any) -> Any:
    """Tell worker(s) to send task events."""
    return ok(
        "task events enabled" if handle.set_task_events(True) else "task events already enabled"
    )


@_command(CONTROL)
def disable_events(handle: WorkerHandle, **_: Any) -> Any:
    """Tell worker(s) to stop sending task events."""
    changed = handle.set_task_events(False)
    return ok("task events disabled" if changed else "task events already disabled")


@_command(CONTROL)
def heartbeat(handle: WorkerHandle, **_: Any) -> Any:
    """Tell worker(s) to send a heartbeat event now."""
    handle.send_heartbeat()
    return None


@_command(CONTROL, args=(("task_name", str), ("rate_limit", str)))
def rate_limit(handle: WorkerHandle, task_name: str, rate_limit: str | None, **_: Any) -> Any:
    """Set a task's rate limit (e.g. 10/s, 100/m; 0 or none: no limit)."""
    rate = None if rate_limit in (None, "", "0", "none", "None") else str(rate_limit)
    handle.set_rate_limit(task_name, rate)
    if rate is None:
        return ok("rate limit disabled successfully")
    return ok("new rate limit set successfully")


@_command(CONTROL, args=(("task_name", str), ("soft", float), ("hard", float)))
def time_limit(
    handle: WorkerHandle,
    task_name: str,
    soft: float | None = None,
    hard: float | None = None,
    **_: Any,
) -> Any:
    """Set a task's soft and hard time limits, in seconds."""
    handle.set_time_limit(task_name, soft, hard)
    return ok("time limits set successfully")


@_command(CONTROL, args=(("n", int),))
def pool_grow(handle: WorkerHandle, n: int = 1, **_: Any) -> Any:
    """Grow the pool by n processes, threads or coroutine slots."""
    size = handle.resize_pool(abs(int(n)))
    return ok(f"pool will grow to {size}")


@_command(CONTROL, args=(("n", int),))
def pool_shrink(handle: WorkerHandle, n: int = 1, **_: Any) -> Any:
    """Shrink the pool by n."""
    size = handle.resize_pool(-abs(int(n)))
    return ok(f"pool will shrink to {size}")


@_command(CONTROL, args=(("max", int), ("min", int)))
def autoscale(handle: WorkerHandle, max: int, min: int | None = None, **_: Any) -> Any:  # noqa: A002
    """Set the autoscale bounds of a prefork pool started with --autoscale."""
    high, low = handle.autoscale(int(max), int(min if min is not None else max))
    return ok(f"autoscale now max={high} min={low}")


@_command(
    CONTROL,
    args=(("queue", str), ("exchange", str), ("exchange_type", str), ("routing_key", str)),
)
def add_consumer(handle: WorkerHandle, queue: str, **_: Any) -> Any:
    """Start consuming a queue."""
    if handle.add_queue(queue):
        return ok(f"add consumer {queue}")
    return ok(f"already consuming from {queue}")


@_command(CONTROL, args=(("queue", str),))
def cancel_consumer(handle: WorkerHandle, queue: str, **_: Any) -> Any:
    """Stop consuming a queue."""
    if handle.cancel_queue(queue):
        return ok(f"no longer consuming from {queue}")
    return {"error": f"not consuming from {queue}: consumed are {', '.join(handle.queues())}"}


@_command(CONTROL, variadic="task_id")
def revoke(
    handle: WorkerHandle,
    task_id: str | Sequence[str],
    terminate: bool = False,
    signal: str | int | None = None,
    **_: Any,
) -> Any:
    """Revoke tasks by id (terminate=True also stops them if running)."""
    ids = [task_id] if isinstance(task_id, str) else [str(i) for i in task_id]
    signum = signal_number(signal or "SIGTERM")
    stopped = handle.revoke(ids, bool(terminate), signum)
    if terminate:
        return ok(f"terminate: {', '.join(stopped)}" if stopped else "terminate: tasks unknown")
    return ok(f"tasks {', '.join(ids)} flagged as revoked")


@_command(CONTROL, args=(("signal", str),), variadic="task_id")
def terminate(handle: WorkerHandle, signal: str, task_id: str | Sequence[str], **_: Any) -> Any:
    """Terminate tasks by id with a signal."""
    return revoke(handle, task_id, terminate=True, signal=signal)


@_command(CONTROL)
def shutdown(handle: WorkerHandle, msg: str = "Got shutdown from remote", **_: Any) -> Any:
    """Shut worker(s) down (warm: running tasks finish)."""
    log.warning("%s", msg)
    handle.shutdown()
    return ok("shutting down")
