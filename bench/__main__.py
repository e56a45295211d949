"""``python -m bench`` (through ``bench/run``): run the workloads, print the tables,
write ``bench/results/<timestamp>.json`` and ``.md``. See bench/README.md."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal as signals
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import pyspy, rabbit, report, scale, specs
from bench.procs import BenchError, DelayServer, RedisServer
from bench.workloads import Bench, Config

RESULTS = Path(__file__).resolve().parent / "results"
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "profile")
#: What ``--broker amqp`` runs (bench.rabbit).
AMQP_WORKLOADS = ("W1", "W3", "W4")
QUICK = Config(
    drain_n=2_000,
    results_n=500,
    trials=100,
    latency_budget=5.0,
    enqueue_n=1_000,
    async_n=2_000,
    green_n=2_000,
    backlog_taskq=100_000,
    backlog_others=2_000,
    due_n=500,
    due_n_taskq=5_000,
    due_timeout=8.0,
    scale_n=20_000,
    scale_n_others=2_000,
    scale_backlog=200_000,
    scale_rounds=1,
)
TITLES = {
    "W1": "W1 drain throughput, results off",
    "W2": "W2 drain throughput, results stored, get() on each",
    "W3": "W3 idle latency: enqueue -> task start, enqueue -> get() returns",
    "W4": "W4 enqueue rate (no worker running)",
    "W5": "W5 taskq asyncio pool: tasks awaiting asyncio.sleep(0.01)",
    "W6": "W6 delayed backlog (countdown 1 h), then tasks due together",
    "W7": "W7 blocking I/O, one process, concurrency 1,000: one 10 ms wait on a local server a task",
    "W8": "W8 cost as work grows: queues, a deep backlog, processes (per task, steady window)",
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run of about 6 minutes"
    )
    parser.add_argument("--only", default=",".join(WORKLOADS), help="workloads, comma-separated")
    parser.add_argument("--frameworks", default=",".join(specs.FRAMEWORKS))
    parser.add_argument("--port", type=int, default=6390, help="bench Redis; the signal uses +1")
    parser.add_argument(
        "--broker",
        choices=("redis", "amqp"),
        default="redis",
        help="amqp: the queues on the local RabbitMQ (vhosts taskq-bench-*, made and deleted "
        f"by the run), results on Redis; workloads {','.join(AMQP_WORKLOADS)}, no Huey",
    )
    parser.add_argument(
        "--drain-rows",
        choices=("all", "issue"),
        default=None,
        help="W1/W2 workers: all (default), or only those the issue names (--quick's default): "
        "taskq solo/threads/prefork, Celery prefork, Dramatiq -p 2, Huey -w 2 -k process",
    )
    defaults = Config()
    for field in dataclasses.fields(Config):
        flag = "--" + field.name.replace("_", "-")
        kind = type(getattr(defaults, field.name))
        parser.add_argument(flag, type=kind, default=None, help=f"default {field.default:,}")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    base = QUICK if args.quick else Config()
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Config)
        if getattr(args, f.name) is not None
    }
    return dataclasses.replace(base, **changes)


def run(
    bench: Bench, only: set[str], frameworks: set[str], logs: Path, rows_of: str
) -> dict[str, Any]:
    cfg = bench.config
    result: dict[str, Any] = {}

    def rows(name: str, make: Callable[[], list[dict[str, Any]]]) -> None:
        if name not in only:
            return
        started = time.monotonic()
        print(f"\n== {TITLES.get(name, name)}", flush=True)
        result[name] = make()
        print(f"   ({time.monotonic() - started:.0f} s)", flush=True)

    drain = specs.DRAIN_ISSUE if rows_of == "issue" else specs.DRAIN
    chosen = [s for s in drain if s.framework in frameworks]
    single = [s for s in specs.SINGLE if s.framework in frameworks]
    rows("W1", lambda: [_show(bench.drain(s, cfg.drain_n, False, "W1")) for s in chosen])
    rows("W2", lambda: [_show(bench.drain(s, cfg.results_n, True, "W2")) for s in chosen])
    rows("W3", lambda: [_show(bench.ping_floor())] + [_show(bench.latency(s)) for s in single])
    rows(
        "W4",
        lambda: [_show(r) for f in specs.FRAMEWORKS if f in frameworks for r in bench.enqueue(f)],
    )
    if "taskq" in frameworks:
        w5 = lambda: [_show(bench.drain(specs.TASKQ_ASYNCIO, cfg.async_n, False, "W5", "sleepy"))]  # noqa: E731
        rows("W5", w5)
    rows("W6", lambda: [_show(bench.backlog(s)) for s in single])
    green = [row for row in specs.GREEN if row[0].framework in frameworks]
    if "W7" in only and green:
        server = DelayServer(int(bench.delay_address.rpartition(":")[2]), logs / "delay.log")
        server.start()
        try:
            rows("W7", lambda: [_show(bench.green(s, cfg.green_n, t, h)) for s, t, h in green])
        finally:
            server.stop()
    w8 = [f for f in specs.FRAMEWORKS if f in frameworks]
    rows("W8", lambda: scale.Scale(bench).rows(w8, _show))
    if "profile" in only and "taskq" in frameworks:
        print("\n== profile: taskq -P solo draining no-op tasks under py-spy", flush=True)
        try:
            result["profile"] = pyspy.record(
                bench, cfg.drain_n, logs / "taskq-solo.speedscope.json"
            )
        except BenchError as exc:
            result["profile"] = {"error": str(exc)}
            print(f"   failed: {exc}")
    return result


def _show(row: dict[str, Any]) -> dict[str, Any]:
    """One progress line per row, so a long run shows life."""
    brief = {k: v for k, v in row.items() if not isinstance(v, dict)}
    print("   " + json.dumps(brief, default=str)[:300], flush=True)
    return row


def render(result: dict[str, Any], markdown: bool) -> str:
    table = report.markdown_table if markdown else report.text_table
    columns = {"W1": report.W1, "W2": report.W2, "W3": report.W3, "W4": report.W4}
    columns.update(W5=report.W1, W6=report.W6, W7=report.W7, W8=scale.COLUMNS)
    out: list[str] = []
    for name, cols in columns.items():
        if result.get(name):
            out += [f"\n{'### ' if markdown else ''}{TITLES[name]}\n", table(cols, result[name])]
    if result.get("W8"):
        out += [
            f"\n{'### ' if markdown else ''}W8 Redis time per task, by command (INFO commandstats)\n"
        ]
        out.append(table(scale.COMMANDS, result["W8"]))
    for row in result.get("W8", []):
        if "self" in row.get("profile", {}):
            title = f"Profile: W8 {row['case']}, {row['config']} (py-spy)"
            out += [
                f"\n{'### ' if markdown else ''}{title}\n",
                _profile_text(row["profile"], markdown),
            ]
    commands = report.commands_table(result)
    if commands:
        out += ["\n" + ("### " if markdown else "") + "Redis commands per task, by phase\n"]
        out.append(table(report.COMMANDS, commands))
    profile = result.get("profile")
    if profile and "self" in profile:
        out += ["\n" + ("### " if markdown else "") + "Profile: taskq -P solo drain (py-spy)\n"]
        out.append(_profile_text(profile, markdown))
    return "\n".join(out)


def _profile_text(profile: dict[str, Any], markdown: bool) -> str:
    lines = [
        f"{profile['seconds']:.1f} s of samples of {profile['thread']} (start-up imports, "
        f"{profile['import_seconds_left_out']:.1f} s, left out); "
        f"{profile['tasks_per_s_under_profiler']:,.0f} tasks/s under the profiler; "
        f"{profile['socket_wait_share'] * 100:.0f}% of the time in socket send/recv "
        "(waiting on Redis).",
    ]
    for title, key in (
        ("Top self time", "self"),
        ("Outside socket waits", "self_outside_socket_wait"),
    ):
        lines += ["", f"{title}:", ""]
        if markdown:
            lines += ["| Self | Function | Where |", "|---:|:---|:---|"]
        for entry in profile[key]:
            share = f"{entry['share'] * 100:.1f}%"
            if markdown:
                lines.append(f"| {share} | `{entry['function']}` | {entry['where']} |")
            else:
                lines.append(f"{share:>6}  {entry['function']} ({entry['where']})")
    lines += ["", "taskq functions, total time (callees included):", ""]
    for entry in profile.get("taskq_inclusive", [])[:22]:
        lines.append(
            f"{'- ' if markdown else '  '}{entry['share'] * 100:5.1f}%  {entry['function']}"
        )
    lines += ["", "Self time by file:", ""]
    for entry in profile["self_by_file"][:10]:
        lines.append(f"{'- ' if markdown else '  '}{entry['share'] * 100:5.1f}%  {entry['file']}")
    return "\n".join(lines)


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so the finally blocks stop every process


def main(argv: list[str] | None = None) -> int:
    signals.signal(signals.SIGTERM, _terminated)
    args = parse(sys.argv[1:] if argv is None else argv)
    cfg = config_from(args)
    only = set(args.only.split(","))
    frameworks = set(args.frameworks.split(","))
    amqp: frozenset[str] = frozenset()
    if args.broker == "amqp":
        only &= set(AMQP_WORKLOADS)
        frameworks &= set(rabbit.FRAMEWORKS)
        amqp = frozenset(frameworks)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = RESULTS / stamp
    logs.mkdir(parents=True, exist_ok=True)
    broker = RedisServer(args.port, "broker")
    signal = RedisServer(args.port + 1, "signal")
    started = time.monotonic()
    try:
        broker.start()
        signal.start()
        rabbit.create(amqp)
        info = report.machine(broker)
        info["broker"] = args.broker
        print("bench: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
        bench = Bench(cfg, broker, signal, logs, amqp)
        rows_of = args.drain_rows or ("issue" if args.quick else "all")
        result = run(bench, only, frameworks, logs, rows_of)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.stop()
        broker.stop()
        rabbit.delete(amqp)
    command = "bench/run " + " ".join(sys.argv[1:] if argv is None else argv)
    document = {
        "command": command.strip(),
        "quick": args.quick,
        "config": dataclasses.asdict(cfg),
        "machine": info,
        "seconds": time.monotonic() - started,
        "results": result,
    }
    (RESULTS / f"{stamp}.json").write_text(json.dumps(document, indent=2, default=str))
    (RESULTS / f"{stamp}.md").write_text(render(result, markdown=True) + "\n")
    print(render(result, markdown=False))
    print(
        f"\nbench: {document['seconds']:.0f} s; wrote bench/results/{stamp}.json, .md and logs in {logs}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
