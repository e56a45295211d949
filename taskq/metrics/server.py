"""Serving a registry over HTTP (``GET /metrics``) from a thread of the worker:
prometheus_client's own WSGI server, which also answers OpenMetrics and gzip.

A prefork child inherits the listening socket by fork; it closes its copy at
once, so the port is the worker's alone and is free again when the worker ends,
even while a child lives on.
"""

from __future__ import annotations

import os
import weakref
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from taskq.errors import ConfigurationError

_SERVERS: weakref.WeakSet[WSGIServer] = weakref.WeakSet()


def _close_in_child() -> None:
    for server in list(_SERVERS):
        server.socket.close()
    _SERVERS.clear()


os.register_at_fork(after_in_child=_close_in_child)


class MetricsServer:
    """``registry`` served on ``host:port`` until ``close`` (port 0: any free port).

    Raises:
        ConfigurationError: the address cannot be bound (in use, not this host's).
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        try:
            self._server, self._thread = start_http_server(port, host, registry)
        except OSError as exc:
            raise ConfigurationError(
                f"Cannot serve metrics on {host}:{port}: {exc.strerror or exc}. Choose "
                "another --metrics-port / worker_metrics_port (or --metrics-host)."
            ) from exc
        _SERVERS.add(self._server)
        address = self._server.server_address
        self.host, self.port = str(address[0]), int(address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self, timeout: float = 2.0) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)
        _SERVERS.discard(self._server)


__all__ = ["MetricsServer"]
