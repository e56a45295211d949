"""Monkey-patching for the gevent and eventlet pools, before anything else is imported.

A green pool runs thousands of tasks in one thread, switching between them when one
waits on a socket. That works only when every blocking call in the process
(``socket``, ``select``, ``threading``, ``time.sleep``, ``ssl``...) is replaced by
the library's cooperative version, and the replacement must happen before any
module keeps a reference to the original: kombu, redis-py and the user's app all do
``import socket`` or ``import threading`` at import time. So the ``taskq`` command
(``taskq.__main__``) reads ``-P``/``--pool`` from the command line and patches
first, before it imports the CLI, the app or any library; ``taskq/__init__.py``
imports nothing eagerly, so reaching this module costs nothing. Celery does the
same in ``celery/__main__.py`` (``maybe_patch_concurrency``).

Only these two pools patch, and only when asked for on the command line. A pool
chosen by ``worker_pool`` in the app's configuration is known only after the app is
imported, too late: the pool then refuses to start and says to pass ``-P``.

This module imports nothing from taskq and nothing outside the standard library at
import time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

#: The pools that need a patched process, and the extra that installs their library.
GREEN_POOLS = {"gevent": "taskq[gevent]", "eventlet": "taskq[eventlet]"}


def pool_in(argv: Sequence[str]) -> str | None:
    """The pool a ``worker`` command line asks for (``-P x``, ``-Px``, ``--pool x``,
    ``--pool=x``), or None when the command is not ``worker`` or names no pool."""
    if "worker" not in argv:
        return None
    args = list(argv[list(argv).index("worker") + 1 :])
    for i, arg in enumerate(args):
        if arg == "--":
            return None
        if arg in ("-P", "--pool"):
            return args[i + 1] if i + 1 < len(args) else None
        if arg.startswith("--pool="):
            return arg.partition("=")[2]
        if arg.startswith("-P") and not arg.startswith("--"):
            return arg[2:]
    return None


def patch_for(pool: str | None) -> bool:
    """Monkey-patch this process for ``pool`` when it is a green pool.

    Returns True when the process is now patched for it. False when ``pool`` is
    not a green pool, or its library is not installed: the pool itself then
    refuses to start with an error that names the extra to install.
    """
    patch = _PATCHES.get(pool or "")
    if patch is None:
        return False
    try:
        patch()
    except ImportError:
        return False
    return True


def patched(pool: str) -> bool:
    """True when this process was monkey-patched by ``pool``'s library (socket,
    select, threading and time; ``patch_for`` patches all of them)."""
    if pool == "gevent" and "gevent.monkey" in sys.modules:
        from gevent import monkey

        return all(monkey.is_module_patched(m) for m in ("socket", "select", "threading", "time"))
    if pool == "eventlet" and "eventlet.patcher" in sys.modules:
        from eventlet import patcher

        return all(patcher.is_monkey_patched(m) for m in ("socket", "select", "thread", "time"))
    return False


def green() -> str | None:
    """The green library this process was patched by, or None."""
    return next((pool for pool in GREEN_POOLS if patched(pool)), None)


def _patch_gevent() -> None:
    from gevent import monkey

    monkey.patch_all()


def _patch_eventlet() -> None:
    import eventlet

    eventlet.monkey_patch()


_PATCHES: dict[str, Callable[[], None]] = {"gevent": _patch_gevent, "eventlet": _patch_eventlet}


def original_thread() -> tuple[Callable[..., Any], Callable[[], Any]]:
    """``(start_new_thread, allocate_lock)`` of the standard ``_thread`` module as
    it was before patching: a thread of the OS and a lock that blocks it, whatever
    the process was patched by. Once patched, ``threading.Thread`` is a greenlet."""
    pool = green()
    if pool == "gevent":
        from gevent import monkey

        return (
            monkey.get_original("_thread", "start_new_thread"),
            monkey.get_original("_thread", "allocate_lock"),
        )
    if pool == "eventlet":
        from eventlet import patcher

        original = patcher.original("_thread")
        return original.start_new_thread, original.allocate_lock
    import _thread

    return _thread.start_new_thread, _thread.allocate_lock
