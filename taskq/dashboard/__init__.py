"""The web dashboard: ``taskq dashboard`` (``pip install 'taskq[dashboard]'``).

A Starlette application served by uvicorn, its pages rendered by Jinja2 with
autoescaping on. It reads the fleet from the event stream (``taskq.events``),
the queues and the dead-letter queue from the broker, beat's record from the
result backend (``taskq.beat.status``), and steers workers with remote control
(``app.control``). Parts:

    options.py    DashboardOptions: where it listens and how it authenticates
    history.py    throughput and failures per minute over the last hour
    monitor.py    Monitor: the events thread, the broker poller, what pages read
    guard.py      authentication (token or basic), CSRF, allowed Host names
    pages.py      the pages (GET), each also as a fragment for live updates
    actions.py    the actions (POST): requeue, purge, revoke, pool, rate limit
    web.py        the Starlette application: routes, templates, server-sent events
    server.py     serve(): the monitor and uvicorn, until Ctrl-C

Only ``options`` is imported here, so the CLI can check its options and say
what to install before Starlette is needed.
"""

from taskq.dashboard.options import DashboardOptions

__all__ = ["DashboardOptions"]
