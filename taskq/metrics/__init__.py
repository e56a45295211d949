"""Prometheus metrics: fleet-wide from events (``FleetMetrics``, served by the
dashboard at ``/metrics``) and per worker without events (``taskq worker
--metrics-port``, ``WorkerMetrics``). docs/monitoring.md lists every metric.

``prometheus_client`` is an optional extra (``pip install 'taskq[metrics]'``,
also part of ``taskq[dashboard]``); ``require()`` says so when it is missing.
"""

from __future__ import annotations

from taskq.errors import ConfigurationError

__all__ = ["require"]


def require(feature: str) -> None:
    """Raise ``ConfigurationError`` naming the extra when prometheus_client is missing.

    Args:
        feature: what needs it, for the message (``"--metrics-port"``).
    """
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            f"{feature} needs prometheus_client: pip install 'taskq[metrics]'."
        ) from None
