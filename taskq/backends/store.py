"""``ResultStore``: an app's result backend, opened on first use.

The app makes one and hands it to whatever reads or writes results (tasks,
``AsyncResult``, canvas, the worker's executor, remote control), so none of them
goes through the app to find the backend, and settings changed before the first
use (``config_from_object`` after the tasks were declared) still apply.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from taskq.backends import backend_from_url
from taskq.backends.base import Backend, StoreRetry
from taskq.config import backend_url_of
from taskq.errors import ConfigurationError

if TYPE_CHECKING:
    from taskq.config import Settings
    from taskq.security import Security

__all__ = ["ResultStore"]


class ResultStore:
    """The result backend for ``conf``'s ``result_backend``, built on first use."""

    def __init__(self, conf: Settings, security: Security | None = None) -> None:
        self.conf = conf
        self.security = security
        self._backend: Backend | None = None
        self._lock = threading.Lock()
        self._inherited: list[Backend] = []  # see reset

    @property
    def backend(self) -> Backend | None:
        """The backend, or None when results are disabled."""
        if self._backend is not None:
            return self._backend
        url = backend_url_of(self.conf)
        if url is None:
            return None
        with self._lock:
            if self._backend is None:
                conf = self.conf
                self._backend = backend_from_url(
                    url,
                    expires=conf.result_expires,
                    serializer=conf.result_serializer,
                    accept=conf.result_accept_content or conf.accept_content,
                    options=conf.result_backend_transport_options,
                    store_retry=StoreRetry.from_settings(conf),
                    sealer=self.security.sealer if self.security is not None else None,
                )
            return self._backend

    def require(self) -> Backend:
        """The backend.

        Raises:
            ConfigurationError: results are disabled (no ``result_backend`` with a
                broker configured).
        """
        backend = self.backend
        if backend is None:
            raise ConfigurationError(
                "No result backend is configured, so results are not stored. Set "
                "App(backend='redis://...') or result_backend, or use the embedded "
                "default by configuring no broker."
            )
        return backend

    def reset(self) -> None:
        """Forget the backend without closing it (in a forked child, its connections
        are the parent's); the next use opens a new one. The old one stays
        referenced, so it is never garbage-collected (and closed) here."""
        if self._backend is not None:
            self._inherited.append(self._backend)
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._backend = None

    def close(self) -> None:
        """Close the backend's connections; the next use opens new ones."""
        with self._lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None
