"""``task_routes``: which queue a task goes to.

Accepted forms, as in Celery: a mapping of task name (or glob pattern) to a
queue name or to options (``{"queue": ..., "priority": ...}``), a callable
``(name, args, kwargs, options) -> options | None``, or a list of these tried
in order.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from taskq.errors import ConfigurationError

Router = Callable[[str, tuple[Any, ...], dict[str, Any], dict[str, Any]], Any]


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
