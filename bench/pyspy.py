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


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by self and by total samples, and self samples per source file."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    profiles = data["profiles"]
    main = next((p for p in profiles if "MainThread" in p["name"]), profiles[0])
    own: collections.Counter[int] = collections.Counter()
    inclusive: collections.Counter[int] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, weight in zip(main["samples"], main["weights"], strict=True):
        if not stack:
            continue
        total += weight
        leaf = stack[-1]  # speedscope stacks run from the root to the leaf
        own[leaf] += weight
        files[_short(frames[leaf].get("file", "?"))] += weight
        for index in set(stack):
            inclusive[index] += weight

    def entry(index: int, count: int) -> dict[str, Any]:
        frame = frames[index]
        where = f"{_short(frame.get('file', '?'))}:{frame.get('line', '?')}"
        return {"function": frame["name"], "where": where, "share": count / total}

    return {
        "samples": total,
        "thread": main["name"],
        "self": [entry(i, c) for i, c in own.most_common(top)],
        "total": [entry(i, c) for i, c in inclusive.most_common(top)],
        "self_by_file": [{"file": f, "share": c / total} for f, c in files.most_common(top)],
    }


def _short(file: str) -> str:
    """A path from the package root: site-packages/redis/x.py -> redis/x.py."""
    for marker in ("site-packages/", "/lib/python3.", f"{ROOT}/"):
        if marker in file:
            tail = file.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    return file
