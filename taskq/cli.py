"""The ``taskq`` command. The only module that parses argv, exits or configures logging.

Each command builds its options and calls library code.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from taskq.app import App
from taskq.errors import ConfigurationError, TaskqError, TimeoutError
from taskq.result import states
from taskq.urls import mask_url
from taskq.version import __version__

EX_OK = 0
EX_FAILURE = 1
#: ``taskq result``: the task failed (FAILURE) / was revoked or expired (REVOKED).
EX_TASK_FAILED = 3
EX_TASK_REVOKED = 4
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
#: ``taskq result --wait --timeout``: the task was not ready in time.
EX_TEMPFAIL = 75

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


def _fail(exc: TaskqError) -> NoReturn:
    """Stop on ``exc``: a configuration mistake is a usage error (exit 2), anything
    else means a server could not be reached or refused (exit 69)."""
    if isinstance(exc, ConfigurationError):
        raise click.UsageError(str(exc)) from exc
    click.echo(f"Error: {exc}", err=True)
    sys.exit(EX_UNAVAILABLE)


def find_app(spec: str) -> App:
    """Import ``module``, ``module:attr`` or a package and return its App.

    Without ``:attr``, the module's ``app`` attribute is used, else the only App
    in the module, else the same search in ``<module>.app`` and ``<module>.celery``.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    module = _import(module_name)
    if attr:
        found = getattr(module, attr, None)
        if not isinstance(found, App):
            raise click.UsageError(f"{spec!r}: {module_name} has no App named {attr!r}.")
        return found
    app = _app_in(module)
    if app is not None:
        return app
    for sub in ("app", "celery", "tasks"):
        if (
            not hasattr(module, "__path__")
            or importlib.util.find_spec(f"{module_name}.{sub}") is None
        ):
            continue
        app = _app_in(_import(f"{module_name}.{sub}"))
        if app is not None:
            return app
    raise click.UsageError(
        f"No taskq App found in {module_name!r}. Name it 'app' or pass -A {module_name}:NAME."
    )


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception:
        click.echo(f"Error: could not import {name!r}:\n{traceback.format_exc()}", err=True)
        sys.exit(EX_SOFTWARE)


def _app_in(module: Any) -> App | None:
    if isinstance(getattr(module, "app", None), App):
        return module.app  # type: ignore[no-any-return]
    apps = [v for v in vars(module).values() if isinstance(v, App)]
    return apps[0] if len(apps) == 1 else None


def _resolve_app(ctx: click.Context, local: str | None) -> App:
    spec = local or ctx.obj.get("app_spec")
    if not spec:
        raise click.UsageError("Which app? Pass -A module (before or after the command).")
    app = find_app(spec)
    from taskq.loader import TaskModuleError, import_task_modules

    try:
        import_task_modules(app)
    except TaskModuleError as exc:
        cause = exc.__cause__ or exc
        trace = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
        click.echo(f"Error: could not import {exc.module!r}:\n{trace}", err=True)
        sys.exit(EX_SOFTWARE)
    return app


json_option = click.option("--json", "as_json", is_flag=True, help="Print the replies as JSON.")
app_option = click.option(
    "-A", "--app", "app_spec", default=None, help="module, module:attr or package holding the App."
)


@click.group()
@click.version_option(__version__, prog_name="taskq")
@app_option
@click.pass_context
def main(ctx: click.Context, app_spec: str | None) -> None:
    """taskq: run workers, send tasks, read results."""
    ctx.ensure_object(dict)
    ctx.obj["app_spec"] = app_spec


def _autoscale(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        high, _, low = value.partition(",")
        return int(high), int(low or high)
    except ValueError:
        raise click.BadParameter(f"{value!r}: write MAX,MIN, e.g. 10,3") from None


@main.command()
@app_option
@click.option(
    "-c",
    "--concurrency",
    type=int,
    default=None,
    help="Pool size (default: CPU count; asyncio, gevent and eventlet 100).",
)
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["prefork", "threads", "solo", "asyncio", "gevent", "eventlet"]),
    default=None,
    help="Where tasks run (default: worker_pool, prefork).",
)
@click.option("-Q", "--queues", default=None, help="Comma-separated queues to consume.")
@click.option("-n", "--hostname", default=None, help="Node name; %h is the host name.")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--logfile", type=click.Path(dir_okay=False), default=None)
@click.option("--json-logs", is_flag=True, help="Write each log record as one JSON object.")
@click.option("--prefetch-multiplier", type=click.IntRange(min=1), default=None)
@click.option(
    "--max-tasks-per-child",
    type=click.IntRange(min=1),
    default=None,
    help="Prefork: recycle after N tasks.",
)
@click.option(
    "--max-memory-per-child",
    type=click.IntRange(min=1),
    default=None,
    help="Prefork: recycle a child past this resident memory, in KiB.",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Hard time limit, seconds.",
)
@click.option(
    "--soft-time-limit",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Soft time limit, seconds.",
)
@click.option(
    "--autoscale", callback=_autoscale, default=None, help="Prefork: MAX,MIN children, by load."
)
@click.option("-B", "--beat", "embed_beat", is_flag=True, help="Also run beat, in a child process.")
@click.option(
    "-E", "--task-events", is_flag=True, default=None, help="Send task events (monitoring)."
)
@click.option("--without-heartbeat", is_flag=True, help="Send no worker events.")
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds between worker-heartbeat events (default 2).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on this port (0: any free one); needs taskq[metrics].",
)
@click.option(
    "--metrics-host",
    default=None,
    help="The address metrics are served on (default 127.0.0.1).",
)
@click.pass_context
def worker(
    ctx: click.Context,
    app_spec: str | None,
    concurrency: int | None,
    pool: str | None,
    queues: str | None,
    hostname: str | None,
    loglevel: str,
    logfile: str | None,
    json_logs: bool,
    prefetch_multiplier: int | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    time_limit: float | None,
    soft_time_limit: float | None,
    autoscale: tuple[int, int] | None,
    embed_beat: bool,
    task_events: bool | None,
    without_heartbeat: bool,
    heartbeat_interval: float | None,
    metrics_port: int | None,
    metrics_host: str | None,
) -> None:
    """Start a worker. SIGTERM or Ctrl-C: warm shutdown (running tasks finish);
    a second one, or SIGQUIT: cold shutdown (running tasks go back to the queue)."""
    from taskq.worker.banner import banner
    from taskq.worker.options import WorkerOptions
    from taskq.worker.worker import Worker

    _configure_logging(loglevel, logfile, json_logs)
    app = _resolve_app(ctx, app_spec)
    options = WorkerOptions(
        queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
        concurrency=concurrency,
        pool=pool,
        hostname=hostname,
        prefetch_multiplier=prefetch_multiplier,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        autoscale=autoscale,
        task_events=task_events,
        without_heartbeat=without_heartbeat,
        heartbeat_interval=heartbeat_interval,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    try:
        w = Worker(app, options)
    except (TaskqError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(banner(w))
    if app.conf.worker_redirect_stdouts:  # after the banner, which is for the terminal
        from taskq.worker.redirect import redirect_stdouts

        try:
            redirect_stdouts(app.conf.worker_redirect_stdouts_level)
        except TaskqError as exc:
            raise click.UsageError(str(exc)) from exc
    beat_process = None
    if embed_beat:
        from taskq.beat import start_beat_process

        beat_process = start_beat_process(app)
    w.install_signal_handlers()
    try:
        w.run()
    except TaskqError as exc:
        _fail(exc)
    finally:
        if beat_process is not None:
            beat_process.terminate()
            beat_process.join(10)


@main.command()
@app_option
@click.argument("name")
@click.option("--args", "args_json", default="[]", help="Positional arguments as a JSON list.")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments as a JSON object.")
@click.option(
    "--queue", default=None, help="Queue to send to (default: its route, else task_default_queue)."
)
@click.option("--countdown", type=float, default=None, help="Run no sooner than SECONDS from now.")
@click.option(
    "--eta",
    default=None,
    help="Run no sooner than this ISO 8601 time (2026-05-01T09:00:00+00:00; "
    "without an offset, in the app's timezone).",
)
@click.option(
    "--expires",
    default=None,
    help="Seconds from now, or an ISO 8601 time, after which the task is not run (REVOKED).",
)
@click.option("--priority", type=click.IntRange(0, 255), default=None, help="Message priority.")
@click.pass_context
def call(
    ctx: click.Context,
    app_spec: str | None,
    name: str,
    args_json: str,
    kwargs_json: str,
    queue: str | None,
    countdown: float | None,
    eta: str | None,
    expires: str | None,
    priority: int | None,
) -> None:
    """Send task NAME and print its id.

    The name need not be registered in the -A app (a worker of another app may
    know it): a warning says so. A registered task's arguments are checked against
    its signature first, as delay() checks them.
    """
    app = _resolve_app(ctx, app_spec)
    args = _json_arg("--args", args_json, list)
    kwargs = _json_arg("--kwargs", kwargs_json, dict)
    options: dict[str, Any] = {
        "queue": queue,
        "countdown": countdown,
        "eta": _time_arg("--eta", eta) if eta is not None else None,
        "expires": _expires_arg(expires) if expires is not None else None,
        "priority": priority,
    }
    task = app.tasks.get(name)
    if task is None:
        click.echo(
            f"Warning: {app.not_registered(name)} Sending it anyway: a worker of another "
            "app may know it.",
            err=True,
        )
    elif task.typing:
        try:
            task.check_arguments(args, kwargs)
        except TypeError as exc:
            raise click.UsageError(str(exc)) from exc
    try:
        result = app.send_task(
            name, args, kwargs, **{k: v for k, v in options.items() if v is not None}
        )
    except TaskqError as exc:
        _fail(exc)
    click.echo(result.id)


def _time_arg(flag: str, text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an ISO 8601 time; write e.g. 2026-05-01T09:00:00+00:00",
            param_hint=flag,
        ) from None


def _expires_arg(text: str) -> float | datetime:
    try:
        return float(text)
    except ValueError:
        return _time_arg("--expires", text)


def _json_arg(flag: str, text: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=flag) from exc
    if not isinstance(value, kind):
        raise click.BadParameter(
            f"must be a JSON {'list' if kind is list else 'object'}", param_hint=flag
        )
    return value


@main.command()
@app_option
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Wait until the task is ready.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="With --wait: give up after SECONDS (exit code 75).",
)
@click.pass_context
def result(
    ctx: click.Context, app_spec: str | None, task_id: str, wait: bool, timeout: float | None
) -> None:
    """Print the state and result of TASK_ID as JSON.

    Exit codes: 0 the task succeeded, or is not ready yet (without --wait); 3 it
    failed (FAILURE); 4 it was revoked or expired (REVOKED); 75 --wait --timeout
    passed before it was ready; 69 the result backend could not be reached.
    """
    if timeout is not None and not wait:
        raise click.UsageError("--timeout applies to --wait: add --wait.")
    app = _resolve_app(ctx, app_spec)
    res = app.AsyncResult(task_id)
    try:
        if wait:
            res.get(timeout=timeout, propagate=False)
        meta = app.require_backend().meta(task_id)
    except TimeoutError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EX_TEMPFAIL)
    except TaskqError as exc:
        _fail(exc)
    click.echo(json.dumps(meta, indent=2, default=str))
    status = meta.get("status")
    if status == states.FAILURE:
        sys.exit(EX_TASK_FAILED)
    if status == states.REVOKED:
        sys.exit(EX_TASK_REVOKED)


@main.command()
@app_option
@click.option(
    "-Q", "--queues", default=None, help="Comma-separated queues (default: the default queue)."
)
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge(ctx: click.Context, app_spec: str | None, queues: str | None, force: bool) -> None:
    """Delete every waiting message in the queues."""
    app = _resolve_app(ctx, app_spec)
    names = [q.strip() for q in queues.split(",")] if queues else [app.conf.task_default_queue]
    if not force:
        click.confirm(f"Delete all waiting messages in {', '.join(names)}?", abort=True)
    try:
        total = sum(app.broker.purge(name) for name in names)
    except TaskqError as exc:
        _fail(exc)
    click.echo(f"Purged {total} message(s) from {', '.join(names)}.")


@main.group(invoke_without_command=True)
@app_option
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--logfile", type=click.Path(dir_okay=False), default=None)
@click.pass_context
def beat(ctx: click.Context, app_spec: str | None, loglevel: str, logfile: str | None) -> None:
    """Send periodic tasks (beat_schedule and add_periodic_task) when due;
    'taskq beat status' shows what beat did."""
    import signal as signals
    import threading

    from taskq.beat import run_beat, scheduler_for, wait_for_broker

    if app_spec:
        ctx.obj["app_spec"] = app_spec
    if ctx.invoked_subcommand is not None:
        return
    _configure_logging(loglevel, logfile)
    app = _resolve_app(ctx, app_spec)
    try:
        scheduler = scheduler_for(app)
    except TaskqError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(
        f"taskq beat {__version__}: {len(scheduler.entries)} periodic task(s), broker {mask_url(app.broker_url)}"
    )
    stop = threading.Event()
    for sig in (signals.SIGTERM, signals.SIGINT):
        signals.signal(sig, lambda *_: stop.set())
    try:
        connected = wait_for_broker(app, stop)
    except TaskqError as exc:
        _fail(exc)
    if connected:
        run_beat(scheduler, stop)


@beat.command("status")
@app_option
@json_option
@click.pass_context
def beat_status(ctx: click.Context, app_spec: str | None, as_json: bool) -> None:
    """Each periodic entry: schedule, next run, last run, its task's id, state and
    runtime; and which beat holds the lease."""
    from taskq.beat.status import beat_status as read_status

    app = _resolve_app(ctx, app_spec)
    try:
        found = read_status(app)
    except TaskqError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)
    if as_json:
        click.echo(json.dumps(found.as_dict(), indent=2))
        return
    holder = found.holder or "nobody (no beat is running)"
    click.echo(f"Lease: {found.lease}" + (f", held by {holder}" if found.lease == "redis" else ""))
    if not found.entries:
        click.echo("No periodic tasks (beat_schedule is empty).")
    for e in found.entries:

        def when(t: Any) -> str:
            return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "never"

        runtime = f"{e.last_runtime:.4g}s" if e.last_runtime is not None else "-"
        click.echo(
            f"\n{e.name}  ({e.task})\n"
            f"    schedule  {e.schedule}\n"
            f"    next run  {when(e.next_run_at)}\n"
            f"    last run  {when(e.last_run_at)} (sent {when(e.last_sent_at)}, "
            f"{e.total_run_count} run(s) so far)\n"
            f"    last task {e.last_task_id or '-'}  state {e.last_state or '-'}  runtime {runtime}"
        )


# -- monitoring and remote control (docs/monitoring.md) ------------------------------


def _destination(value: str | None) -> list[str] | None:
    return [n.strip() for n in value.split(",") if n.strip()] if value else None


destination_option = click.option(
    "-d", "--destination", default=None, help="Comma-separated worker names (default: all)."
)
timeout_option = click.option(
    "-t", "--timeout", type=float, default=None, help="Seconds to wait for replies."
)


def _remote(
    ctx: click.Context,
    app_spec: str | None,
    kind: str,
    method: str,
    words: tuple[str, ...],
    destination: str | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Send one command and print the replies; exit 69 when nobody answered."""
    from taskq.control import CommandError, commands, flatten
    from taskq.control.text import nodes

    app = _resolve_app(ctx, app_spec)
    try:
        command = commands.lookup(method)
        if command.kind != kind:
            other = "control" if kind == "inspect" else "inspect"
            raise click.UsageError(f"{method!r} is a {command.kind} command: use 'taskq {other}'.")
        arguments = command.parse(words)
        replies = app.control.broadcast(
            command.name,
            arguments,
            _destination(destination),
            reply=True,
            timeout=timeout if timeout is not None else command.timeout,
        )
    except CommandError as exc:
        raise click.UsageError(str(exc)) from exc
    except TaskqError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)
    by_node = flatten(replies or [])
    if as_json:
        click.echo(json.dumps(by_node, indent=2, sort_keys=True, default=str))
    elif by_node:
        click.echo(nodes(by_node))
    if not by_node:
        click.echo("Error: No nodes replied within time constraint.", err=True)
        sys.exit(EX_UNAVAILABLE)
    if any(isinstance(r, dict) and "error" in r for r in by_node.values()):
        sys.exit(EX_FAILURE)


def _command_help(kind: str) -> str:
    from taskq.control import commands

    rows = [
        f"  {c.name} {c.signature}".rstrip() + f"\n      {c.help}"
        for c in sorted(commands.COMMANDS.values(), key=lambda c: c.name)
        if c.kind == kind
    ]
    return "\n".join(rows)


@main.command(context_settings={"ignore_unknown_options": False})
@app_option
@click.argument("method")
@click.argument("words", nargs=-1)
@destination_option
@timeout_option
@json_option
@click.pass_context
def inspect(
    ctx: click.Context,
    app_spec: str | None,
    method: str,
    words: tuple[str, ...],
    destination: str | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Ask workers: active, reserved, scheduled, registered, stats, revoked,
    active_queues, conf, query_task, report, clock, ping."""
    _remote(ctx, app_spec, "inspect", method, words, destination, timeout, as_json)


@main.command()
@app_option
@click.argument("method")
@click.argument("words", nargs=-1)
@destination_option
@timeout_option
@json_option
@click.pass_context
def control(
    ctx: click.Context,
    app_spec: str | None,
    method: str,
    words: tuple[str, ...],
    destination: str | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Steer workers: enable_events, disable_events, rate_limit, time_limit, pool_grow,
    pool_shrink, autoscale, add_consumer, cancel_consumer, revoke, terminate,
    shutdown, heartbeat."""
    _remote(ctx, app_spec, "control", method, words, destination, timeout, as_json)


inspect.help = f"{inspect.help}\n\n\b\nCommands:\n{_command_help('inspect')}"
control.help = f"{control.help}\n\n\b\nCommands:\n{_command_help('control')}"


@main.command()
@app_option
@timeout_option
@json_option
@click.pass_context
def status(ctx: click.Context, app_spec: str | None, timeout: float | None, as_json: bool) -> None:
    """List the workers that answer a ping."""
    app = _resolve_app(ctx, app_spec)
    from taskq.control import flatten

    try:
        replies = flatten(app.control.ping(timeout=timeout or 1.0))
    except TaskqError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)
    if as_json:
        click.echo(json.dumps(sorted(replies), indent=2))
    else:
        for name in sorted(replies):
            click.echo(f"->  {name}: OK")
        if replies:
            count = len(replies)
            click.echo(f"\n{count} node{'s' if count != 1 else ''} online.")
    if not replies:
        click.echo("Error: No nodes replied within time constraint.", err=True)
        sys.exit(EX_UNAVAILABLE)


@main.command()
@app_option
@click.option("--dump", is_flag=True, help="Print every event as one JSON object per line.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Stop after this many events."
)
@click.option(
    "--max-tasks", type=click.IntRange(min=1), default=10_000, show_default=True,
    help="Tasks kept in the live view.",
)  # fmt: skip
@click.pass_context
def events(
    ctx: click.Context, app_spec: str | None, dump: bool, limit: int | None, max_tasks: int
) -> None:
    """Watch workers and tasks live (Ctrl-C to quit), or --dump the raw events."""
    import threading

    from taskq.events import view

    app = _resolve_app(ctx, app_spec)
    stop = threading.Event()
    try:
        if dump:
            view.dump(app.conf, stop, click.echo, limit, wakeup=app.control.heartbeat)
        else:
            view.live(app.conf, stop, max_tasks=max_tasks, wakeup=app.control.heartbeat)
    except KeyboardInterrupt:
        stop.set()
    except TaskqError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)


@main.command()
@app_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True)
@click.option(
    "--token", envvar="TASKQ_DASHBOARD_TOKEN", default=None,
    help="Require this token (env TASKQ_DASHBOARD_TOKEN, which keeps it out of ps).",
)  # fmt: skip
@click.option(
    "--basic-auth", envvar="TASKQ_DASHBOARD_BASIC_AUTH", default=None, metavar="USER:PASSWORD",
    help="Require HTTP basic authentication (env TASKQ_DASHBOARD_BASIC_AUTH).",
)  # fmt: skip
@click.option(
    "--max-tasks", type=click.IntRange(min=1), default=None,
    help="Tasks kept in memory [default: the dashboard_max_tasks setting, 10000].",
)  # fmt: skip
@click.option("-l", "--loglevel", default="WARNING", show_default=True)
@click.pass_context
def dashboard(
    ctx: click.Context,
    app_spec: str | None,
    host: str,
    port: int,
    token: str | None,
    basic_auth: str | None,
    max_tasks: int | None,
    loglevel: str,
) -> None:
    """Serve the web dashboard: workers, queues, tasks, failures, schedules, /metrics.

    Listens on 127.0.0.1 unless --host says otherwise, and refuses any other
    address without --token or --basic-auth. Needs pip install 'taskq[dashboard]'.
    """
    from taskq.dashboard.options import DashboardOptions, parse_basic_auth

    _configure_logging(loglevel, None)
    try:
        options = DashboardOptions(
            host=host,
            port=port,
            token=token,
            basic_auth=parse_basic_auth(basic_auth) if basic_auth else None,
            max_tasks=max_tasks,
        )
        options.check()
    except ConfigurationError as exc:
        _fail(exc)
    try:
        from taskq.dashboard.server import serve
    except ImportError as exc:
        _fail(
            ConfigurationError(
                f"The dashboard needs its extra ({exc.name} is missing): "
                "pip install 'taskq[dashboard]'."
            )
        )
    app = _resolve_app(ctx, app_spec)
    try:
        serve(app, options, say=click.echo)
    except KeyboardInterrupt:
        pass
    except TaskqError as exc:
        _fail(exc)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, process, pid, message and,
    when there is one, the traceback in ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _configure_logging(level: str, logfile: str | None, json_logs: bool = False) -> None:
    handler: logging.Handler = (
        logging.FileHandler(Path(logfile)) if logfile else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(JsonFormatter() if json_logs else logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    try:
        root.setLevel(level.upper())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--loglevel") from exc


# -- dead-letter queue ----------------------------------------------------------------


@main.group()
@app_option
@click.pass_context
def dlq(ctx: click.Context, app_spec: str | None) -> None:
    """List, requeue or purge dead-lettered messages."""
    if app_spec:
        ctx.obj["app_spec"] = app_spec


def _dlq_call(ctx: click.Context, app_spec: str | None, action: Any) -> Any:
    """Run ``action(broker)`` for the app's broker; exit 69 on a broker error."""
    app = _resolve_app(ctx, app_spec)
    try:
        return action(app.broker)
    except TaskqError as exc:
        _fail(exc)
    finally:
        app.close()


@dlq.command("list")
@app_option
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
@click.pass_context
def dlq_list(ctx: click.Context, app_spec: str | None, limit: int, as_json: bool) -> None:
    """Show dead-lettered messages, oldest first, with the reason."""
    from taskq.broker import dlq as dead

    entries = _dlq_call(ctx, app_spec, lambda broker: dead.parked(broker, limit))
    if as_json:
        for entry in entries:
            click.echo(json.dumps(entry.as_dict(), default=str))
        return
    if not entries:
        click.echo("The dead-letter queue is empty.")
        return
    for entry in entries:
        task = f"{entry.task or '-'}[{entry.task_id or '-'}]"
        click.echo(f"{entry.id}  {entry.queue}  {entry.when}  {task}  {entry.reason}")
    click.echo(f"{len(entries)} message(s){' (--limit reached)' if len(entries) == limit else ''}.")


@dlq.command("requeue")
@app_option
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Requeue every parked message.")
@click.pass_context
def dlq_requeue(
    ctx: click.Context, app_spec: str | None, ids: tuple[str, ...], everything: bool
) -> None:
    """Put messages IDS (or --all) back on the queues they came from."""
    from taskq.broker import dlq as dead

    if bool(ids) == everything:
        raise click.UsageError("Give the IDs to requeue (see 'taskq dlq list') or --all.")
    wanted = None if everything else list(ids)
    moved = _dlq_call(ctx, app_spec, lambda broker: dead.requeue(broker, wanted))
    click.echo(f"Requeued {moved} message(s).")
    if wanted is not None and moved < len(set(wanted)):
        click.echo(
            f"Error: {len(set(wanted)) - moved} of the IDs given are not in the dead-letter "
            "queue (see 'taskq dlq list').",
            err=True,
        )
        sys.exit(EX_FAILURE)


@dlq.command("purge")
@app_option
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def dlq_purge(ctx: click.Context, app_spec: str | None, force: bool) -> None:
    """Delete every dead-lettered message."""
    from taskq.broker import dlq as dead

    if not force:
        click.confirm("Delete every message in the dead-letter queue?", abort=True)
    purged = _dlq_call(ctx, app_spec, dead.purge)
    click.echo(f"Purged {purged} dead-lettered message(s).")


if __name__ == "__main__":  # pragma: no cover
    main()
