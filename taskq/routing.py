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
from typing import TYPE_CHECKING, Any

from taskq.errors import ConfigurationError

if TYPE_CHECKING:
    from taskq.queues import Queues

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


#: ``apply_async`` options of Celery that tune kombu's publish or Celery's own
#: bookkeeping. taskq accepts and ignores them, so signatures made by Celery (a
#: chord's body, a chain's next step, a callback) run unchanged on taskq workers.
CELERY_IGNORED_OPTIONS = frozenset(
    {
        "connection", "producer", "publisher", "add_to_parent", "delivery_mode",
        "mandatory", "immediate", "declare", "timeout", "confirm_timeout",
        "exchange_type", "event_dispatcher", "interval", "max_retries", "chord_size",
        "argsrepr", "kwargsrepr",
    }
)  # fmt: skip
#: Celery's options that travel as message headers of the same name.
CELERY_HEADER_OPTIONS = ("stamped_headers", "stamps", "replaced_task_nesting")


def celery_call_options(options: Mapping[str, Any], queues: Callable[[], Queues]) -> dict[str, Any]:
    """``options`` with Celery's own ``apply_async`` options resolved: the ignored ones
    dropped, the header ones moved into ``headers``, a kombu ``Queue`` given as
    ``queue`` made its name, and ``exchange``/``routing_key`` without a ``queue``
    turned into the declared queue bound that way (else the queue named like the
    routing key, as on the default exchange). Other options are left for the caller
    to refuse.

    Raises:
        ConfigurationError: ``compression`` (taskq does not compress messages).
    """
    if "compression" in options and options["compression"] is not None:
        raise ConfigurationError(
            f"compression={options['compression']!r}: taskq does not compress messages. "
            "Remove the option (or task_compression)."
        )
    out = {k: v for k, v in options.items() if k not in CELERY_IGNORED_OPTIONS}
    out.pop("compression", None)
    moved = {name: out.pop(name) for name in CELERY_HEADER_OPTIONS if name in out}
    if moved:
        out["headers"] = {**moved, **(out.get("headers") or {})}
    queue = out.get("queue")
    if queue is not None and not isinstance(queue, str):
        out["queue"] = getattr(queue, "name", queue)  # a kombu Queue
    exchange, routing_key = out.pop("exchange", None), out.pop("routing_key", None)
    exchange = getattr(exchange, "name", exchange)  # a kombu Exchange
    if not out.get("queue") and routing_key:
        out["queue"] = queues().bound_to(exchange, routing_key) or routing_key
    return out
