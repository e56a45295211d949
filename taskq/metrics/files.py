"""Counters and histograms shared by a worker's processes: prometheus_client's
multiprocess files in a directory of the worker's own.

A prefork worker runs its tasks in child processes, so each process counts in a
file of its own (``counter_<pid>.db``, ``histogram_<pid>.db``: the layout
prometheus_client's multiprocess mode writes) and the worker's scrape adds them
up with ``MultiProcessCollector``. A forked process opens files of its own before
it first writes (``os.register_at_fork``: a pid check on each write costs more
than the write), so children count from the moment they run tasks. The files of
a process that ended stay (its counts still count); at each scrape the worker
folds those of ended processes into one ``*_ended.db`` file, so recycled
children (``--max-tasks-per-child``) never make a scrape read thousands of
files. (A new process that got the pid of an ended one in the instant between
the scrape's check and the fold could lose its first counts: pids are reused
only after the system's pid range wraps.)

Unlike prometheus_client's own multiprocess mode this needs no environment
variable set before prometheus_client is first imported (an app's module may
import it first) and changes nothing for the app's own metrics.
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
import weakref
from collections.abc import Iterable

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

#: The file types written here (the first part of a file's name).
KINDS = ("counter", "histogram")
ENDED = "ended"


def key(metric: str, sample: str, labels: dict[str, str], documentation: str) -> str:
    """The key of one sample in a file (``metric``: the family's name)."""
    return mmap_key(metric, sample, list(labels), list(labels.values()), documentation)


class ProcessFiles:
    """Adds to samples in this process's files under ``directory``. Thread-safe."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._pid = 0  # whose files are open (0: none yet)
        self._files: dict[str, MmapedDict] = {}
        self._values: dict[str, float] = {}
        _EVERY.add(self)

    def _forked(self) -> None:
        # In the child: another thread may have held the lock when the process
        # forked; the files and values are the parent's.
        self._lock = threading.Lock()
        self._pid = 0

    def add(self, samples: Iterable[tuple[str, str, float]], family: Iterable[str] = ()) -> None:
        """Add each ``(kind, key, amount)`` to this process's file of that kind. The
        first time a histogram's key is written here, the ``family`` keys (its
        buckets) are written too, at 0: a scrape shows only the samples some file
        holds, and a histogram needs all its buckets."""
        with self._lock:
            if not self._pid:
                self._open()
            values = self._values
            for kind, name, amount in samples:
                file = self._files[kind]
                value = values.get(name)
                if value is None:
                    # The file may be one left by an ended process with this pid.
                    value = file.read_value(name)[0]
                    if kind == "histogram":
                        for other in family:
                            if other not in values:
                                values[other] = file.read_value(other)[0]
                value += amount
                values[name] = value
                file.write_value(name, value, 0.0)

    def _open(self) -> None:
        # After a fork these are the parent's files: closing this process's copies
        # of them leaves the parent's open.
        for file in self._files.values():
            with contextlib.suppress(Exception):
                file.close()
        self._pid = os.getpid()
        self._values = {}
        self._files = {kind: _opened(self.directory, f"{kind}_{self._pid}.db") for kind in KINDS}

    def close(self) -> None:
        with self._lock:
            for file in self._files.values():
                file.close()
            self._files = {}
            self._pid = 0


def _opened(directory: str, name: str) -> MmapedDict:
    """The file ``name``, made whole before a scrape can see it: MmapedDict creates
    an empty file and then sizes it, and a scrape reading it between the two fails."""
    path = os.path.join(directory, name)
    if not os.path.exists(path):  # else left by an ended process with this pid
        partial = f"{path}.new"  # the scrape reads only *.db
        MmapedDict(partial).close()
        os.replace(partial, path)
    return MmapedDict(path)


_EVERY: weakref.WeakSet[ProcessFiles] = weakref.WeakSet()


def _after_fork() -> None:
    for files in list(_EVERY):
        files._forked()


os.register_at_fork(after_in_child=_after_fork)


class Collector(MultiProcessCollector):
    """``MultiProcessCollector`` over ``directory`` that first folds the files of
    ended processes into one (see the module docstring)."""

    def __init__(self, directory: str) -> None:
        super().__init__(None, path=directory)
        self.directory = directory
        self._lock = threading.Lock()

    def collect(self):  # type: ignore[no-untyped-def]
        with self._lock:
            for kind in KINDS:
                self._fold(kind)
            return super().collect()

    def _fold(self, kind: str) -> None:
        ended = [
            path
            for path in glob.glob(os.path.join(self.directory, f"{kind}_*.db"))
            if not _alive(path)
        ]
        if not ended:
            return
        target = os.path.join(self.directory, f"{kind}_{ENDED}.db")
        sources = [*ended, target] if os.path.exists(target) else ended
        merged = MultiProcessCollector.merge(sources, accumulate=False)
        partial = os.path.join(self.directory, f"fold.{kind}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        out = MmapedDict(partial)
        try:
            for metric in merged:
                for sample in metric.samples:
                    out.write_value(
                        key(metric.name, sample.name, sample.labels, metric.documentation),
                        sample.value,
                        0.0,
                    )
        finally:
            out.close()
        os.replace(partial, target)  # the glob skips it: a name without .db until here
        for path in ended:
            os.remove(path)


def _alive(path: str) -> bool:
    """Whether the process that writes ``path`` (``<kind>_<pid>.db``) still runs."""
    pid = os.path.basename(path)[:-3].rsplit("_", 1)[1]
    if not pid.isdigit():
        return True  # the folded file
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """A child that exited but was not reaped yet has ended too."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
