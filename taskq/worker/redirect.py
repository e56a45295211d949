"""``print()`` inside a task reaches the worker's log, with the task's name and id.

Celery's ``worker_redirect_stdouts``: the worker replaces ``sys.stdout`` and
``sys.stderr`` with streams that log each line they are given at
``worker_redirect_stdouts_level`` on the ``taskq.redirected`` logger, prefixed
``name[id]:`` when a task is running in that thread or asyncio task. Prefork
children inherit the streams when they are forked. The CLI installs them after
printing the banner (it is the module that configures logging).
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from typing import TextIO

from taskq.context import current_request
from taskq.errors import ConfigurationError

__all__ = ["LoggingStream", "level_number", "redirect_stdouts"]

logger = logging.getLogger("taskq.redirected")


def level_number(name: str) -> int:
    """The logging level called ``name`` ("WARNING", "info").

    Raises:
        ConfigurationError: no such level.
    """
    level = logging.getLevelName(name.upper())
    if not isinstance(level, int):
        raise ConfigurationError(
            f"worker_redirect_stdouts_level {name!r} is not a logging level. Use DEBUG, "
            "INFO, WARNING, ERROR or CRITICAL."
        )
    return level


class LoggingStream(io.TextIOBase):
    """A text stream that logs each complete line written to it.

    Lines are collected per thread, so two tasks printing at once in a threads pool
    never mix their halves of a line. A write made while logging (a handler that
    writes to this very stream) goes to ``fallback`` instead of looping.
    """

    def __init__(self, level: int, fallback: TextIO) -> None:
        super().__init__()
        self.level = level
        self.fallback = fallback
        self._local = threading.local()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        local = self._local
        if getattr(local, "logging", False):
            return self.fallback.write(text)
        pending: str = getattr(local, "pending", "") + text
        *lines, local.pending = pending.split("\n")
        for line in lines:
            self._log(line)
        return len(text)

    def flush(self) -> None:
        if sys.is_finalizing():
            # Python flushes sys.stdout and sys.stderr on its way out; a green pool's
            # patched thread-local cannot be read then (gevent raises), and a raise
            # here turns the worker's exit status 0 into 120.
            return
        pending = getattr(self._local, "pending", "")
        if pending:
            self._local.pending = ""
            self._log(pending)

    def _log(self, line: str) -> None:
        line = line.rstrip("\r")
        if not line.strip():
            return
        self._local.logging = True
        try:
            request = current_request.get()
            if request is not None and request.id is not None:
                logger.log(self.level, "%s[%s]: %s", request.task, request.id, line)
            else:
                logger.log(self.level, "%s", line)
        finally:
            self._local.logging = False


def redirect_stdouts(level: str) -> None:
    """Replace ``sys.stdout`` and ``sys.stderr`` with ``LoggingStream``s at ``level``.

    Raises:
        ConfigurationError: ``level`` is not a logging level.
    """
    number = level_number(level)
    sys.stdout = LoggingStream(number, sys.__stdout__ or sys.stdout)
    sys.stderr = LoggingStream(number, sys.__stderr__ or sys.stderr)
