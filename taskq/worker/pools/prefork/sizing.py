"""How many children a prefork pool wants: pool_grow / pool_shrink, autoscale, and
how the banner shows it.

Both prefork pools (the dispatching one, ``pool.py``, and the one whose children
consume, ``consuming.py``) size themselves the same way; they differ in how they
retire a child and wake their supervising thread, which they provide.
"""

from __future__ import annotations

import threading

from taskq.worker.pools.base import PoolSettings


class Sizing:
    """The bounds and the wanted size of a pool of children.

    A subclass calls ``_init_sizing`` first and provides ``_retire_beyond(size)``
    and ``_wake_supervisor()``, both called with ``_cond`` held.
    """

    concurrency: int
    _cond: threading.Condition

    def _init_sizing(self, settings: PoolSettings) -> None:
        if settings.autoscale:
            self._max, self._min = settings.autoscale
        else:
            self._max = self._min = settings.concurrency
        self.concurrency = self._max
        self._size = self._min  # children wanted now
        self._autoscaled = settings.autoscale is not None
        self._cond = threading.Condition(threading.Lock())

    def _retire_beyond(self, size: int) -> None:
        raise NotImplementedError

    def _wake_supervisor(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        if self._min != self._max:
            return f"{self._min}-{self._max} (prefork, autoscale)"
        return f"{self._max} (prefork)"

    def resize(self, delta: int) -> int:
        """Grow or shrink by ``delta`` children (at least one stays); returns the new
        size. A child leaving finishes its running task first and gives back what
        waits behind it.

        Raises:
            ValueError: the pool autoscales (change its bounds with ``autoscale``).
        """
        with self._cond:
            if self._min != self._max:
                raise ValueError(
                    f"This pool autoscales ({self._min}-{self._max}); set new bounds with "
                    "autoscale MAX MIN instead of pool_grow / pool_shrink."
                )
            size = max(1, self._size + delta)
            self._retire_beyond(size)
            self._size = self._max = self._min = self.concurrency = size
            self._wake_supervisor()
            return size

    def autoscale(self, high: int, low: int) -> tuple[int, int]:
        """New autoscale bounds (``high`` >= ``low`` >= 1).

        Raises:
            ValueError: bad bounds, or the pool was not started with ``--autoscale``.
        """
        if not 1 <= low <= high:
            raise ValueError(f"autoscale takes MAX >= MIN >= 1, got max={high} min={low}.")
        with self._cond:
            if self._min == self._max and not self._autoscaled:
                raise ValueError("Autoscale is not enabled: start the worker with --autoscale.")
            self._max, self._min, self.concurrency = high, low, high
            size = min(max(self._size, low), high)
            self._retire_beyond(size)
            self._size = size
            self._wake_supervisor()
            return high, low
