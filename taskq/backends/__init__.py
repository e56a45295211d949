"""Result backends, chosen by URL scheme.

Each backend lives in its own module and is imported only when its scheme is
used, so a missing optional dependency (SQLAlchemy, say) matters only to the
apps that ask for that backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from taskq.backends.base import Backend, StoreRetry
from taskq.errors import ConfigurationError, did_you_mean
from taskq.urls import mask_url

if TYPE_CHECKING:
    from taskq.security import Sealer

__all__ = ["KNOWN_SCHEMES", "backend_from_url"]

#: The schemes listed in error messages. Any ``db+<dialect>`` goes to SQLAlchemy.
KNOWN_SCHEMES = ("redis", "rediss", "sqlite", "memory", "db+postgresql", "db+mysql", "db+sqlite")

# scheme -> (module, class, the pip extra that provides its dependencies)
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "redis": ("taskq.backends.redis", "RedisBackend", None),
    "rediss": ("taskq.backends.redis", "RedisBackend", None),
    "sqlite": ("taskq.backends.sqlite", "SqliteBackend", None),
    "memory": ("taskq.backends.memory", "MemoryBackend", None),
    "db": ("taskq.backends.database", "DatabaseBackend", "sqlalchemy"),
}


def backend_from_url(
    url: str,
    *,
    expires: float | None = 86400.0,
    serializer: str = "json",
    accept: Sequence[str] = ("json",),
    options: dict[str, Any] | None = None,
    store_retry: StoreRetry | None = None,
    sealer: Sealer | None = None,
) -> Backend:
    """Build the result backend for ``url``; the arguments are ``Backend``'s.

    Raises:
        ConfigurationError: the scheme is unknown, or the backend's module or one
            of its dependencies cannot be imported.
    """
    module_name, class_name, extra = _lookup(url)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        fix = (
            f"Install its extra: pip install 'taskq[{extra}]'."
            if extra
            else "Reinstall taskq with its dependencies."
        )
        raise ConfigurationError(
            f"The result backend {mask_url(url)!r} cannot be loaded: {exc}. {fix}"
        ) from exc
    backend_class = getattr(module, class_name)
    if not (isinstance(backend_class, type) and issubclass(backend_class, Backend)):
        raise TypeError(f"{module_name}.{class_name} is not a Backend subclass")
    return backend_class(
        url,
        expires=expires,
        serializer=serializer,
        accept=accept,
        options=options,
        store_retry=store_retry,
        sealer=sealer,
    )


def _lookup(url: str) -> tuple[str, str, str | None]:
    known = ", ".join(KNOWN_SCHEMES)
    if "://" not in url:
        raise ConfigurationError(
            f"Result backend URL {mask_url(url)!r} has no scheme. Write it as "
            f"'<scheme>://...', e.g. 'redis://localhost:6379/0' or 'memory://'. Known: {known}."
        )
    scheme = url.partition("://")[0]
    family = "db" if scheme.startswith("db+") else scheme
    if family not in _BACKENDS:
        raise ConfigurationError(
            f"Unknown result backend {mask_url(url)!r}.{did_you_mean(scheme, KNOWN_SCHEMES)} "
            f"Known: {known}."
        )
    return _BACKENDS[family]
