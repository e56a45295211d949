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
from pathlib import Path
from typing import Any

import click

from taskq import __version__
from taskq.app import App
from taskq.errors import TaskqError

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


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
        if not hasattr(module, "__path__") or importlib.util.find_spec(f"{module_name}.{sub}") is None:
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
    for name in [*app.conf.imports, *app.conf.include]:
        _import(name)
    return app


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


@main.command()
@app_option
@click.option("-c", "--concurrency", type=int, default=None, help="Pool size (default: CPU count).")
@click.option("-P", "--pool", type=click.Choice(["prefork", "threads", "solo"]), default=None)
@click.option("-Q", "--queues", default=None, help="Comma-separated queues to consume.")
@click.option("-n", "--hostname", default=None, help="Node name; %h is the host name.")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--logfile", type=click.Path(dir_okay=False), default=None)
@click.option("--prefetch-multiplier", type=int, default=None)
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
    prefetch_multiplier: int | None,
) -> None:
    """Start a worker."""
    from taskq.worker.banner import banner
    from taskq.worker.worker import Worker, WorkerOptions

    _configure_logging(loglevel, logfile)
    app = _resolve_app(ctx, app_spec)
    options = WorkerOptions(
        queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
        concurrency=concurrency,
        pool=pool,
        hostname=hostname,
        prefetch_multiplier=prefetch_multiplier,
    )
    try:
        w = Worker(app, options)
    except (TaskqError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(banner(w))
    w.install_signal_handlers()
    try:
        w.run()
    except TaskqError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)


@main.command()
@app_option
@click.argument("name")
@click.option("--args", "args_json", default="[]", help="Positional arguments as a JSON list.")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments as a JSON object.")
@click.option("--queue", default=None)
@click.option("--countdown", type=float, default=None)
@click.pass_context
def call(
    ctx: click.Context,
    app_spec: str | None,
    name: str,
    args_json: str,
    kwargs_json: str,
    queue: str | None,
    countdown: float | None,
) -> None:
    """Send task NAME and print its id."""
    app = _resolve_app(ctx, app_spec)
    args = _json_arg("--args", args_json, list)
    kwargs = _json_arg("--kwargs", kwargs_json, dict)
    options: dict[str, Any] = {}
    if queue:
        options["queue"] = queue
    if countdown is not None:
        options["countdown"] = countdown
    try:
        result = app.send_task(name, args, kwargs, **options)
    except TaskqError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)
    click.echo(result.id)


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
@click.option("--timeout", type=float, default=None)
@click.pass_context
def result(
    ctx: click.Context, app_spec: str | None, task_id: str, wait: bool, timeout: float | None
) -> None:
    """Print the state and result of TASK_ID."""
    app = _resolve_app(ctx, app_spec)
    res = app.AsyncResult(task_id)
    try:
        if wait:
            res.get(timeout=timeout, propagate=False)
        meta = app.require_backend().meta(task_id)
    except TaskqError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)
    click.echo(json.dumps(meta, indent=2, default=str))


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
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)
    click.echo(f"Purged {total} message(s) from {', '.join(names)}.")


@main.command()
@app_option
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--logfile", type=click.Path(dir_okay=False), default=None)
@click.pass_context
def beat(ctx: click.Context, app_spec: str | None, loglevel: str, logfile: str | None) -> None:
    """Send periodic tasks (beat_schedule and add_periodic_task) when due."""
    import signal as signals
    import threading

    from taskq.beat import run_beat, scheduler_for

    _configure_logging(loglevel, logfile)
    app = _resolve_app(ctx, app_spec)
    try:
        scheduler = scheduler_for(app)
    except TaskqError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"taskq beat {__version__}: {len(scheduler.entries)} periodic task(s), broker {app.broker_url}")
    stop = threading.Event()
    for sig in (signals.SIGTERM, signals.SIGINT):
        signals.signal(sig, lambda *_: stop.set())
    run_beat(scheduler, stop)


def _configure_logging(level: str, logfile: str | None) -> None:
    handler: logging.Handler = (
        logging.FileHandler(Path(logfile)) if logfile else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    try:
        root.setLevel(level.upper())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--loglevel") from exc


if __name__ == "__main__":  # pragma: no cover
    main()
