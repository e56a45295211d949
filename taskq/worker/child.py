"""The body of a prefork child process.

A child receives one ``Context`` at a time on its pipe, runs it with
``executor.execute`` and sends back ``("done", outcome, rss_kib)``. ``None`` (or
the parent's end closing) makes it exit. It never touches the worker's broker
connection: the parent leases, acks and requeues.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from taskq import signals
from taskq.errors import SoftTimeLimitExceeded
from taskq.worker.executor import REQUEUE, Outcome, execute

if TYPE_CHECKING:
    from taskq.app import App

log = logging.getLogger("taskq.worker")

_running = False


def child_main(app: App, conn: Any, name: str, inherited: Iterable[Any]) -> None:
    """Run contexts from ``conn`` until told to stop.

    Args:
        app: the worker's app, inherited by fork.
        conn: this child's end of its pipe to the parent.
        name: the process name shown in logs.
        inherited: pipe ends and file descriptors of the parent and of other
            children that this process got by fork and must not hold open.
    """
    for item in inherited:
        _close(item)
    multiprocessing.current_process().name = name
    # Ctrl-C and Ctrl-\\ reach the whole process group; only the parent decides what
    # they mean. SIGTERM keeps its default so `revoke(terminate=True)` ends the child.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, _soft_limit_now)
    app.reset_connections()
    signals.worker_process_init.send(None, pid=os.getpid())
    while True:
        try:
            ctx = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if ctx is None:
            return
        outcome = _run(app, ctx)
        try:
            conn.send(("done", outcome, rss_kib()))
        except OSError:
            return


def _run(app: App, ctx: Any) -> Outcome:
    global _running
    _running = True
    try:
        return execute(app, ctx, inline_hard_limit=False)
    except Exception:
        log.exception("Internal error running task %s[%s]; giving it back", ctx.task, ctx.id)
        return Outcome(REQUEUE)
    finally:
        _running = False


def _soft_limit_now(signum: int, frame: Any) -> None:
    """SIGUSR1 (Celery's signal for it, e.g. ``revoke(terminate=True,
    signal="SIGUSR1")``) raises ``SoftTimeLimitExceeded`` in the running task."""
    if _running:
        raise SoftTimeLimitExceeded("SIGUSR1 received")


def rss_kib() -> int:
    """This process's resident memory in KiB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _close(item: Any) -> None:
    try:
        if isinstance(item, int):
            os.close(item)
        else:
            item.close()
    except OSError:
        pass
