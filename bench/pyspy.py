"""Where a taskq solo worker spends its time while draining (py-spy, no code changes).

The worker runs under ``py-spy record --idle --nonblocking --format speedscope``
(py-spy starts it, so no ptrace attach is needed), drains a pre-loaded queue and
is then stopped; py-spy writes the profile when the worker exits. ``--idle``
keeps samples of a thread waiting in a system call, so time spent waiting for
Redis replies shows as self time in the socket read. Only the main thread (the
consumer, which also runs the tasks in the solo pool) is summarised.
"""

from __future__ import annotations

import collections
import json
import signal
import time
from pathlib import Path
from typing import Any

from bench.procs import BIN, ROOT, BenchError
from bench.specs import TASKQ_SOLO
from bench.workloads import Bench

#: Leaf frames where redis-py sits in sendall()/recv(): waiting on a Redis round trip
#: (and, on a busy machine, for a core).
SOCKET_WAIT = frozenset(
    {"SocketBuffer._read_from_socket", "AbstractConnection.send_packed_command"}
)


def record(bench: Bench, n: int, out: Path) -> dict[str, Any]:
    """Profile ``TASKQ_SOLO`` draining ``n`` no-op tasks; the summary of ``out``."""
    spy = [str(BIN / "py-spy"), "record", "--idle", "--nonblocking", "--rate", "250"]
    spy += ["--format", "speedscope", "--output", str(out), "--"]
    bench.fresh()
    producer = bench.producer("taskq", False, "profile")
    worker = bench.worker(TASKQ_SOLO, False, "profile", argv=spy + TASKQ_SOLO.argv())
    try:
        producer.call("fast", n=n, task="noop")
        worker.start()
        if not bench.wait_done(n, max(120.0, n / 100), worker):
            raise BenchError(f"the profiled worker did not finish {n} tasks")
        first, last = bench.span()
        children = worker.processes()[1:]  # py-spy's child: the worker itself
        for child in children:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while worker.exited() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        worker.stop()
        producer.close()
    if not out.exists():
        raise BenchError(f"py-spy wrote no profile; see {worker.log}")
    summary = summarise(out)
    summary["tasks_per_s_under_profiler"] = n / (last - first)
    summary["file"] = str(out)
    return summary


def summarise(path: Path, top: int = 15, idle: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Top functions by self and by total samples, and self samples per source file.
    Samples under a function named in ``idle`` are left out, as start-up imports are."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    profiles = data["profiles"]
    main = max(profiles, key=lambda p: _entry_weight(p, frames))
    own: collections.Counter[int] = collections.Counter()
    inclusive: collections.Counter[int] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()  # taskq functions, inclusive
    files: collections.Counter[str] = collections.Counter()
    importing = {i for i, f in enumerate(frames) if f["name"] in {"_find_and_load", *idle}}
    total = skipped = 0.0
    for stack, weight in zip(main["samples"], main["weights"], strict=True):
        if not stack:
            continue
        if importing.intersection(stack):  # start-up: importing modules, not draining
            skipped += weight
            continue
        total += weight
        leaf = stack[-1]  # speedscope stacks run from the root to the leaf
        own[leaf] += weight
        files[_short(frames[leaf].get("file", "?"))] += weight
        for index in set(stack):
            inclusive[index] += weight
        for name in {_where(frames[i], line=False) for i in stack}:
            if name.startswith("taskq/"):
                ours[name] += weight

    waiting = sum(c for i, c in own.items() if frames[i]["name"] in SOCKET_WAIT)
    cpu = [(i, c) for i, c in own.most_common() if frames[i]["name"] not in SOCKET_WAIT]

    def entry(index: int, count: int) -> dict[str, Any]:
        frame = frames[index]
        return {"function": frame["name"], "where": _where(frame), "share": count / total}

    return {
        "seconds": total,
        "import_seconds_left_out": skipped,
        "thread": main["name"],
        "socket_wait_share": waiting / total,
        "self": [entry(i, c) for i, c in own.most_common(top)],
        "self_outside_socket_wait": [entry(i, c) for i, c in cpu[:top]],
        "total": [entry(i, c) for i, c in inclusive.most_common(top)],
        "self_by_file": [{"file": f, "share": c / total} for f, c in files.most_common(top)],
        "taskq_inclusive": [
            {"function": name, "share": c / total} for name, c in ours.most_common(25)
        ],
    }


def _where(frame: dict[str, Any], line: bool = True) -> str:
    """``file:line`` of a frame, or ``file function`` (one entry per function)."""
    file = _short(frame.get("file", "?"))
    return f"{file}:{frame.get('line', '?')}" if line else f"{file} {frame['name']}"


def _entry_weight(profile: dict[str, Any], frames: list[dict[str, Any]]) -> float:
    """Weight of the samples under ``python -m``'s entry frame: the main thread's.
    (py-spy does not always know thread names, so "MainThread" is no test.)"""
    entry = {i for i, f in enumerate(frames) if f["name"] == "_run_module_as_main"}
    pairs = zip(profile["samples"], profile["weights"], strict=True)
    return sum(w for stack, w in pairs if stack and stack[0] in entry)


def _short(file: str) -> str:
    """A path from the package root: site-packages/redis/x.py -> redis/x.py."""
    for marker in ("site-packages/", "/lib/python3.", f"{ROOT}/"):
        if marker in file:
            tail = file.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    return file


def main() -> None:
    """``python -m bench.pyspy PROFILE.speedscope.json``: summarise a saved profile."""
    import sys

    print(json.dumps(summarise(Path(sys.argv[1])), indent=2))


if __name__ == "__main__":
    main()
