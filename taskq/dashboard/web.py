"""The Starlette application: routes, templates and the live stream.

Every page is also its own fragment (``?fragment=1``: the part inside
``<div id="live">``); the page's script listens to ``/live`` (server-sent events,
one message whenever the monitor's ``version`` moves, checked four times a
second) and fetches the fragment again, so a change shows within a second. Jinja
autoescapes every value (``autoescape=True`` for every template), and no template
marks anything ``|safe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from taskq.dashboard import actions, pages
from taskq.dashboard.guard import Guard, GuardMiddleware
from taskq.dashboard.monitor import Monitor
from taskq.dashboard.options import DashboardOptions
from taskq.version import __version__

HERE = os.path.dirname(__file__)
#: How often the live stream looks for a change (seconds).
LIVE_CHECK = 0.25
#: A comment line this often keeps proxies from closing a quiet stream (seconds).
KEEP_ALIVE = 15.0

#: What a page shows, read from the monitor for one request (off the event loop).
Reader = Callable[[Monitor, Request], dict[str, Any]]

NAV = [
    ("overview", "/", "Overview"),
    ("tasks", "/tasks", "Tasks"),
    ("failures", "/failures", "Failures & DLQ"),
    ("schedules", "/schedules", "Schedules"),
    ("workers", "/workers", "Workers"),
]


def templates() -> Jinja2Templates:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["when"] = _when
    environment.filters["seconds"] = _seconds
    return Jinja2Templates(env=environment)


def _when(timestamp: object) -> str:
    if not isinstance(timestamp, (int, float)) or not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _seconds(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.3f} s" if value >= 1 else f"{value * 1000:.2f} ms"


def _here(request: Request) -> str:
    """Where an action's form comes back to: this page, without the fragment flag
    and the last action's message."""
    query = [
        (k, v)
        for k, v in request.query_params.multi_items()
        if k not in ("fragment", "msg", "ok", "token")
    ]
    return request.url.path + (f"?{urlencode(query)}" if query else "")


def rss_bytes() -> int | None:
    """This process's resident set size (Linux), or None."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def create_app(monitor: Monitor, options: DashboardOptions, start: bool = True) -> Starlette:
    """The dashboard for ``monitor``; with ``start`` the monitor's threads run while
    the application does (its lifespan)."""
    guard = Guard(options)
    views = templates()

    def page(name: str, read: Reader) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            context = await run_in_threadpool(read, monitor, request)
            context.update(
                page=name,
                nav=NAV,
                csrf=guard.csrf_token,
                message=request.query_params.get("msg"),
                ok=request.query_params.get("ok") == "1",
                here=_here(request),
                version=__version__,
                app_name=monitor.app.main or "taskq",
            )
            fragment = request.query_params.get("fragment") == "1"
            template = f"_{name}.html" if fragment else "page.html"
            return views.TemplateResponse(request, template, context)

        return endpoint

    async def live(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            seen, quiet = -1, 0.0
            yield "retry: 2000\n\n"
            while True:
                if monitor.version != seen:
                    seen = monitor.version
                    quiet = 0.0
                    yield f"data: {seen}\n\n"
                elif quiet >= KEEP_ALIVE:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(LIVE_CHECK)
                quiet += LIVE_CHECK

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def act(request: Request) -> Response:
        # The forms are urlencoded (no file uploads), read here rather than through
        # python-multipart, which Starlette's request.form() would need.
        body = (await request.body()).decode("utf-8", "replace")
        form = dict(parse_qsl(body, keep_blank_values=True))
        refusal = guard.csrf_refusal(request, form.get("csrf"))
        if refusal is not None:
            return refusal
        ok, message = await run_in_threadpool(
            actions.run, request.path_params["name"], monitor, form
        )
        monitor.version += 1
        back = form.get("back") or "/"
        if not back.startswith("/") or back.startswith("//") or "\\" in back:
            back = "/"  # only this dashboard's own pages: never a redirect elsewhere
        path, _, query = back.partition("?")
        kept = [p for p in query.split("&") if p and not p.startswith(("msg=", "ok="))]
        kept.append(urlencode({"msg": message, "ok": "1" if ok else "0"}))
        return RedirectResponse(f"{path}?{'&'.join(kept)}", status_code=303)

    async def metrics(request: Request) -> Response:
        if monitor.metrics is None:
            return PlainTextResponse(
                "Prometheus metrics need prometheus_client: pip install 'taskq[dashboard]'.",
                status_code=404,
            )
        body, content_type = monitor.metrics.render()
        return Response(body, media_type=content_type)

    async def stats(request: Request) -> Response:
        return JSONResponse(
            {
                "events": monitor.fleet.event_count,
                "version": monitor.version,
                "tasks": monitor.fleet.task_count(),
                "max_tasks": monitor.fleet.max_tasks,
                "lag": monitor.lag(),
                "rss_bytes": rss_bytes(),
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if start:
            monitor.start()
        try:
            yield
        finally:
            if start:
                await run_in_threadpool(monitor.stop)

    routes = [
        Route("/", page("overview", lambda m, r: pages.overview(m))),
        Route("/tasks", page("tasks", lambda m, r: pages.tasks(m, r.query_params))),
        Route(
            "/tasks/{task_id}", page("task", lambda m, r: pages.task(m, r.path_params["task_id"]))
        ),
        Route("/failures", page("failures", lambda m, r: pages.failures(m))),
        Route("/schedules", page("schedules", lambda m, r: pages.schedules(m))),
        Route("/workers", page("workers", lambda m, r: pages.workers(m))),
        Route("/live", live),
        Route("/metrics", metrics),
        Route("/api/stats", stats),
        Route("/actions/{name}", act, methods=["POST"]),
        Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(GuardMiddleware, guard=guard)],
        lifespan=lifespan,
    )
