"""``serve``: the dashboard's monitor and web server, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import signal
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from taskq.dashboard.monitor import Monitor
from taskq.dashboard.options import DashboardOptions
from taskq.dashboard.web import create_app
from taskq.events.connection import broadcasts, unsupported

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.metrics.fleet import FleetMetrics

log = logging.getLogger("taskq.dashboard")


def fleet_metrics() -> FleetMetrics | None:
    """The Prometheus metrics the dashboard serves on ``/metrics``, or None when
    ``taskq.metrics`` or prometheus_client is not installed."""
    try:
        from taskq.metrics.fleet import FleetMetrics
    except ImportError as exc:
        log.warning("Dashboard: no /metrics (%s); pip install 'taskq[dashboard]'", exc)
        return None
    return FleetMetrics()


def serve(app: App, options: DashboardOptions, say: Callable[[str], None] = print) -> None:
    """Run the dashboard for ``app`` until interrupted.

    Raises:
        ConfigurationError: the options are unsafe or wrong (see
            ``DashboardOptions.check``), or the broker cannot broadcast events.
    """
    import uvicorn

    options.check()
    if not broadcasts(app.broker_url):
        raise unsupported(app.broker_url, "The dashboard")
    max_tasks = options.max_tasks or app.conf.dashboard_max_tasks
    monitor = Monitor(app, max_tasks, options.poll_interval, fleet_metrics())
    web = create_app(monitor, options)
    auth = "token" if options.token else "basic auth" if options.basic_auth else "none (loopback)"
    say(
        f"taskq dashboard on http://{options.host}:{options.port}/ "
        f"(authentication: {auth}; keeping {max_tasks} tasks)"
    )
    # uvicorn raises the signal it stopped on again once it has shut down; with
    # this handler in place that ends the process normally (exit 0), as a worker
    # stopped with SIGTERM does, instead of killed by the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    # Workers on the same broker under one name are the operator's to fix; the
    # poller asking every few seconds must not repeat the warning each time.
    warnings.filterwarnings("ignore", message="Two workers replied as", category=UserWarning)
    uvicorn.run(
        web,
        host=options.host,
        port=options.port,
        log_level="warning",
        access_log=False,
        # Open live streams never end by themselves: give them a second, then close.
        timeout_graceful_shutdown=1,
    )
