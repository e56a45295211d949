"""Run ``python -m tests.faults.crash_after_fetch <taskq arguments>``: the taskq CLI in
a process that dies (exit 70) the moment a Redis fetch has leased messages, before
the broker's own bookkeeping sees the reply: the crash window the lease must cover.

The hook lives here, in the tests, rather than in the fetch path: the worker's hot
path carries no test switches.
"""

from __future__ import annotations

import os
from typing import Any

from taskq.broker.redis.fetch import Fetcher

EXIT_CODE = 70


def install() -> None:
    """Make every ``Fetcher`` in this process exit as soon as a fetch leased something."""
    answered = Fetcher._answered

    def crash_if_leased(self: Fetcher, call: Any, reply: list[Any]) -> None:
        if reply[1]:  # the payloads: leased on the server, unknown to this process
            os._exit(EXIT_CODE)
        answered(self, call, reply)

    Fetcher._answered = crash_if_leased  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    from taskq.cli import main

    main()
