"""``task_routes``: which queue a task goes to.

Accepted forms, as in Celery: a mapping of task name (or glob pattern) to a
queue name or to options (``{"queue": ..., "priority": ...}``), a callable
``(name, args, kwargs, options) -> options | None``, or a list of these tried
in order.

The producer reads routes through a ``RouteCache``: it copies the routes at an
app's first send (Celery too reads its routes once) and again after
``task_routes`` is replaced (``app.conf.task_routes = ...``); a mapping changed
in place is not seen.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from taskq.errors import ConfigurationError

Router = Callable[[str, tuple[Any, ...], dict[str, Any], dict[str, Any]], Any]


class RouteCache:
    """``route`` for one ``task_routes`` value, answers kept per task name.

    Mappings are copied when the router is made and their answer for a name never
    changes, so it is computed once; callables see each call's arguments, so routes
    with one are asked on every call.
    """

    def __init__(self, routes: Any) -> None:
        self.routes = routes
        candidates = (
            [] if routes is None else routes if isinstance(routes, (list, tuple)) else [routes]
        )
        self._copy = [dict(c) if isinstance(c, Mapping) else c for c in candidates]
        self._static = not any(callable(c) for c in candidates)
        self._known: dict[str, dict[str, Any]] = {}

    def route(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> dict[str, Any]:
        """The routing options for task ``name``; shared between calls, so read only."""
        if not self._static:
            return route(self._copy, name, args, kwargs, options)
        found = self._known.get(name)
        if found is None:
            found = self._known[name] = route(self._copy, name, args, kwargs, options)
        return found


def route(
    routes: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> dict[str, Any]:
    """The routing options for task ``name`` (empty when no route matches)."""
    if routes is None:
        return {}
    candidates: Sequence[Any] = routes if isinstance(routes, (list, tuple)) else [routes]
    for candidate in candidates:
        found = _match(candidate, name, args, kwargs, options)
        if found is not None:
            return found
    return {}


def _match(
    candidate: Any,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: dict[str, Any],
) -> dict[str, Any] | None:
    if callable(candidate):
        return _as_options(candidate(name, args, kwargs, options), name)
    if isinstance(candidate, Mapping):
        if name in candidate:
            return _as_options(candidate[name], name)
        for pattern, target in candidate.items():
            if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(name, pattern):
                return _as_options(target, name)
        return None
    raise ConfigurationError(
        f"task_routes entries must be mappings or callables, got {type(candidate).__name__}."
    )


def _as_options(target: Any, name: str) -> dict[str, Any] | None:
    if target is None:
        return None
    if isinstance(target, str):
        return {"queue": target}
    if isinstance(target, Mapping):
        return dict(target)
    raise ConfigurationError(
        f"task_routes for {name!r} must be a queue name or a mapping of options, got {target!r}."
    )
