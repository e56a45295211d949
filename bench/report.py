"""Tables for the terminal and for docs/performance.md, from a run's rows."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Callable
from importlib import metadata
from typing import Any

from bench.procs import ROOT, RedisServer

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], str]]


def machine(server: RedisServer) -> dict[str, Any]:
    """What the figures were measured on."""
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        mem_kib = int(meminfo.readline().split()[1])
    versions = {
        name: metadata.version(name) for name in ("celery", "kombu", "dramatiq", "huey", "redis")
    }
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "taskq": f"{metadata.version('taskq') if _installed('taskq') else '?'} ({_git()})",
        **versions,
        "redis_server": server.version(),
    }


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def _git() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "no git"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "taskq")
    return f"{head}{' + uncommitted changes in taskq/' if dirty else ''}"


# -- cell formatting -------------------------------------------------------------------


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _get(key: str, digits: int = 0) -> Callable[[Row], str]:
    return lambda row: _num(row.get(key), digits)


def _per(value: float) -> str:
    """Commands per task: small figures keep two significant digits, never 4e-05."""
    if value >= 0.1 or value <= 0:
        return f"{value:.2f}"
    return f"{value:.{1 - math.floor(math.log10(value))}f}"


def _calls(key: str) -> Callable[[Row], str]:
    return lambda row: _per(row[key]["total"]) if key in row else "-"


def _rss(row: Row) -> str:
    if "rss_mib" not in row:
        return "-"
    return f"{row['rss_mib']:.0f} ({row['peak_rss_mib']:.0f})"


def _done(row: Row) -> str:
    text = _num(row.get("tasks_per_s"))
    if row.get("timed_out"):
        text += f" (timed out: {row['completed']:,} of {row['n']:,} ran)"
    return text


def _enqueue_rate(row: Row) -> str:
    return _num(row["n"] / row["enqueue_s"]) if "enqueue_s" in row else "-"


def _promotion(row: Row, key: str, digits: int) -> str:
    """W6 promotion figures: taskq's only (bench/README.md says why)."""
    if row["framework"] != "taskq":
        return "n/a"
    if "promote_left" in row:
        return f"timed out, {row['promote_left']:,} left"
    return row.get("promote_note") or _num(row.get(key), digits)


W1: list[Column] = [
    ("Worker", lambda r: r["config"]),
    ("Procs", lambda r: str(r["processes"])),
    ("Tasks/s", _done),
    ("Drain s", _get("drain_s", 2)),
    ("Enqueue/s", _enqueue_rate),
    ("Redis cmds/task: enqueue", _calls("enqueue_calls")),
    ("drain", _calls("drain_calls")),
    ("Redis CPU us/task", _get("redis_cpu_us", 1)),
    ("RSS MiB end (peak)", _rss),
]
LOAD: Column = ("Load", _get("load1", 1))
W1.append(LOAD)
W2: list[Column] = [
    *W1[:4],
    ("All get() done s", _get("collected_s", 2)),
    *W1[4:],
]
W3: list[Column] = [
    ("Worker", lambda r: r["config"]),
    ("Trials", _get("trials")),
    ("Start p50 ms", _get("start_p50_ms", 2)),
    ("Start p99 ms", _get("start_p99_ms", 2)),
    ("get() p50 ms", _get("get_p50_ms", 2)),
    ("get() p99 ms", _get("get_p99_ms", 2)),
    ("Redis cmds/trial", _calls("calls")),
    ("RSS MiB", _get("rss_mib")),
    LOAD,
]
W4: list[Column] = [
    ("Framework", lambda r: r["framework"]),
    ("Mode", lambda r: r.get("mode", "-")),
    ("API", lambda r: f"`{r['api']}`" if "api" in r else "-"),
    ("Msgs/s", _get("per_s")),
    ("Redis cmds/msg", _calls("calls")),
    ("Redis CPU us/msg", _get("redis_cpu_us", 1)),
]
W7: list[Column] = [
    ("Worker", lambda r: r["config"]),
    ("Tasks/s", _done),
    ("Drain s", _get("drain_s", 2)),
    ("In flight (max)", _get("in_flight_max")),
    ("RSS MiB idle", _get("idle_rss_mib")),
    ("holding", _get("held_rss_mib")),
    ("Held at once", _get("held")),
    ("MiB per 1,000 in flight", _get("mib_per_1000", 1)),
    ("Redis cmds/task", _calls("drain_calls")),
    LOAD,
]
W6: list[Column] = [
    ("Worker", lambda r: r["config"]),
    ("Backlog", _get("backlog")),
    ("Load s", _get("load_s", 1)),
    ("Redis MiB", _get("redis_used_mib")),
    ("RSS MiB before", _get("rss_before_mib")),
    ("after (peak)", lambda r: f"{_num(r.get('rss_after_mib'))} ({_num(r.get('peak_rss_mib'))})"),
    ("Due ran", lambda r: f"{_num(r.get('completed'))} of {_num(r['due'])}"),
    ("Due -> promoted s", lambda r: _promotion(r, "promote_s", 3)),
    ("Promoted/s", lambda r: _promotion(r, "promoted_per_s", 0)),
    ("Due -> all ran s", _get("drain_s", 2)),
    ("Ran/s", _get("ran_per_s")),
    ("Late p50 s", _get("late_p50_s", 3)),
    ("Late p99 s", _get("late_p99_s", 3)),
    ("Redis cmds/task: backlog", _calls("load_calls")),
    ("due", _calls("due_calls")),
    LOAD,
]


def _cells(columns: list[Column], row: Row) -> list[str]:
    reason = row.get("skipped") or row.get("error")
    if reason:
        word = "skipped" if "skipped" in row else "failed"
        first = columns[0][1](row)
        return [first, f"{word}: {' '.join(str(reason).split())}"] + [""] * (len(columns) - 2)
    return [fn(row) for _, fn in columns]


def text_table(columns: list[Column], rows: list[Row]) -> str:
    grid = [[h for h, _ in columns]] + [_cells(columns, r) for r in rows]
    ok = [
        g for g, r in zip(grid[1:], rows, strict=True) if not (r.get("skipped") or r.get("error"))
    ]
    widths = [max(len(line[i]) for line in [grid[0], *ok]) for i in range(len(columns))]
    widths[0] = max(len(line[0]) for line in grid)
    lines = []
    for line in grid:
        if line[2:] and not any(line[2:]):  # skipped/failed: one free-running cell
            lines.append(f"{line[0]:<{widths[0]}}  {line[1]}")
            continue
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
    return "\n".join(lines)


def markdown_table(columns: list[Column], rows: list[Row]) -> str:
    grid = [[c.replace("|", "\\|") for c in _cells(columns, r)] for r in rows]
    numeric = [all(_numeric(line[i]) for line in grid) for i in range(len(columns))]
    lines = ["| " + " | ".join(h for h, _ in columns) + " |"]
    lines.append("|" + "|".join("---:" if n else ":---" for n in numeric) + "|")
    lines += ["| " + " | ".join(line) + " |" for line in grid]
    return "\n".join(lines)


def _numeric(cell: str) -> bool:
    return not cell or cell[0].isdigit() or cell[0] in "-("


PHASES = {
    ("W3", "calls"): "idle trial",
    ("W4", "calls"): "enqueue",
    ("W6", "load_calls"): "backlog load",
    ("W6", "due_calls"): "due drain",
}


def commands_table(result: dict[str, Any]) -> list[Row]:
    """One row per (workload, worker, phase): Redis commands per task and the top ones."""
    rows: list[Row] = []
    phases = {
        "W1": ("enqueue_calls", "drain_calls"),
        "W2": ("enqueue_calls", "drain_calls"),
        "W3": ("calls",),
        "W4": ("calls",),
        "W5": ("enqueue_calls", "drain_calls"),
        "W6": ("load_calls", "due_calls"),
    }
    for workload, keys in phases.items():
        for row in result.get(workload, []):
            for key in keys:
                if key in row:
                    top = ", ".join(f"{k} {_per(v)}" for k, v in row[key]["top"].items())
                    name = row.get("config") or f"{row['framework']} ({row.get('mode')})"
                    phase = PHASES.get((workload, key), key.removesuffix("_calls"))
                    rows.append(
                        {"w": workload, "who": name, "phase": phase, **row[key], "list": top}
                    )
    return rows


COMMANDS: list[Column] = [
    ("Workload", lambda r: r["w"]),
    ("Worker / producer", lambda r: r["who"]),
    ("Phase", lambda r: r["phase"]),
    ("Cmds/task", lambda r: _per(r["total"])),
    ("Most frequent (per task)", lambda r: r["list"]),
]
