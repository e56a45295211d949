"""Per-task rate limits of one worker: ``"10/s"``, ``"100/m"``, ``"1000/h"``.

Each task name has a token bucket holding at most one token, refilled at the
rate (Celery's behaviour: starts are spaced evenly, no bursts). ``reserve`` takes
the next token and says how long to wait for it, so the worker parks only that
request and goes on with others. Limits are per worker process, not global.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from taskq.errors import ConfigurationError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: str | float | int | None) -> float | None:
    """Tasks per second for ``"N/s"``, ``"N/m"``, ``"N/h"`` or a bare number (per
    second); None or 0 means unlimited.

    Raises:
        ConfigurationError: the text is not a rate.
    """
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text) or None
    count, _, unit = str(text).strip().partition("/")
    try:
        per_second = float(count) / _UNITS[unit.strip().lower()[:1] or "s"]
    except (ValueError, KeyError):
        raise ConfigurationError(
            f"Invalid rate limit {text!r}: write it as 'N/s', 'N/m' or 'N/h' (e.g. '10/s')."
        ) from None
    if per_second < 0:
        raise ConfigurationError(f"Invalid rate limit {text!r}: it cannot be negative.")
    return per_second or None


class RateLimiter:
    """Token buckets by task name. Not thread-safe: the consumer thread owns it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next_token: dict[str, float] = {}

    def reserve(self, name: str, per_second: float) -> float:
        """Take the next token for ``name``; return the seconds to wait before
        starting (0.0 when a token is there now)."""
        now = self._clock()
        at = max(now, self._next_token.get(name, now))
        self._next_token[name] = at + 1.0 / per_second
        return at - now
