"""Connecting at start-up: wait for a broker that is not up yet.

A worker or beat started before its broker (containers started together, a host
rebooting) retries with backoff and logs each attempt, as Celery does under
``broker_connection_retry_on_startup``; ``broker_connection_max_retries`` bounds
the attempts. Once connected, each part handles a lost connection its own way
(the worker's consumer loop reconnects with backoff; beat retries its tick).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from taskq.config import Settings
from taskq.errors import BrokerError
from taskq.urls import mask_url

__all__ = ["FIRST_PAUSE", "MAX_PAUSE", "connect_on_startup"]

log = logging.getLogger("taskq.startup")

#: Seconds before the first retry; each pause doubles up to ``MAX_PAUSE``.
FIRST_PAUSE = 1.0
MAX_PAUSE = 30.0


def connect_on_startup(
    connect: Callable[[], None],
    *,
    url: str,
    conf: Settings,
    stop: threading.Event,
    who: str,
) -> bool:
    """Call ``connect`` until it returns, pausing 1, 2, 4 ... up to 30 s between tries.

    Args:
        connect: the first thing that needs the broker (declaring the queues); it
            raises ``BrokerError`` while the broker cannot be reached.
        url: the broker URL, for the log (its password is masked).
        conf: ``broker_connection_retry_on_startup`` and
            ``broker_connection_max_retries`` are read from it.
        stop: set by a shutdown request; waiting ends at once.
        who: what is connecting ("worker", "beat"), for the log.

    Returns:
        True once connected; False when ``stop`` was set while waiting.

    Raises:
        BrokerError: the broker could not be reached and retrying is off, or the
            retries allowed by ``broker_connection_max_retries`` are spent.
    """
    limit = conf.broker_connection_max_retries or None  # 0 or None: no limit (Celery's)
    pause, retries = FIRST_PAUSE, 0
    while True:
        try:
            connect()
        except BrokerError as exc:
            if not conf.broker_connection_retry_on_startup:
                raise BrokerError(
                    f"{exc} Not retrying: broker_connection_retry_on_startup is False "
                    "(set it to True to wait for the broker at start-up)."
                ) from exc
            if limit is not None and retries >= limit:
                raise BrokerError(
                    f"{who}: gave up connecting to {mask_url(url)} after {retries} "
                    f"retries (broker_connection_max_retries={limit}): {exc} Start the "
                    "broker, or raise broker_connection_max_retries (0 retries forever)."
                ) from exc
            retries += 1
            log.warning(  # the error names the server, its password masked
                "%s: cannot connect to the broker: %s Trying again in %.0fs (retry %d of %s).",
                who,
                exc,
                pause,
                retries,
                limit or "unlimited",
            )
            if stop.wait(pause):
                return False
            pause = min(pause * 2, MAX_PAUSE)
            continue
        if retries:
            log.info("%s: connected to %s after %d retries.", who, mask_url(url), retries)
        return True
