"""The processes the bench starts and stops by pid: Redis servers, workers, producers.

Every process here is started by the bench and ended by the bench through the pid
it got from ``subprocess.Popen`` (children of a worker through the pids psutil
lists under it), never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SHARED_REDIS_PORT = 6379  # the team's Redis: the bench never touches it


class BenchError(RuntimeError):
    """Something the bench needs did not happen; the message says what."""


class RedisServer:
    """A throwaway redis-server on 127.0.0.1 with persistence off."""

    def __init__(self, port: int, name: str) -> None:
        if port == SHARED_REDIS_PORT:
            raise BenchError(
                f"Port {port} is the shared Redis; the bench flushes its own server. "
                "Pick another port with --port."
            )
        self.port, self.name = port, name
        self.url = f"redis://127.0.0.1:{port}"
        self._dir = tempfile.mkdtemp(prefix=f"bench-redis-{port}-")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        if shutil.which("redis-server") is None:
            raise BenchError("redis-server is not on PATH; apt-get install redis-server.")
        probe = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            probe.ping()
            raise BenchError(f"Something already listens on 127.0.0.1:{self.port}; use --port.")
        except redis.ConnectionError:
            pass
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", self._dir]
        argv += ["--loglevel", "warning"]
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise BenchError(f"redis-server on port {self.port} did not start")

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def flush(self) -> None:
        """FLUSHALL on this bench-owned server, never on the shared one."""
        assert self.port != SHARED_REDIS_PORT
        self.client().flushall()

    def command_calls(self) -> dict[str, int]:
        stats = self.client().info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def cpu_seconds(self) -> float:
        """CPU the server has used (INFO cpu: used_cpu_sys + used_cpu_user)."""
        cpu = self.client().info("cpu")
        return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])

    def version(self) -> str:
        return str(self.client().info("server")["redis_version"])

    def used_memory(self) -> int:
        return int(self.client().info("memory")["used_memory"])

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)


_OWN = ("info", "flushall", "flushdb")  # the bench's own commands


def calls_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands run between two INFO commandstats snapshots (scripts' inner calls too)."""
    changed = {k: after[k] - before.get(k, 0) for k in after if k not in _OWN}
    return {k: n for k, n in sorted(changed.items(), key=lambda kv: -kv[1]) if n}


def worker_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment for workers and producers: ours, minus settings that would
    point a framework elsewhere (TASKQ_BROKER_URL and friends), plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TASKQ_", "CELERY_", "DRAMATIQ_", "dramatiq_", "HUEY_"))
    }
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Worker:
    """One framework worker (a process tree), started and stopped by pid."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = list(argv), env, log
        self._proc: subprocess.Popen[bytes] | None = None
        self.peak_rss = 0
        self._known: dict[int, psutil.Process] = {}

    def start(self) -> Worker:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"$ {' '.join(self.argv)}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                self.argv, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def exited(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def tail(self, lines: int = 8) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def processes(self) -> list[psutil.Process]:
        """The worker and every process under it (remembered for the final stop)."""
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for proc in procs:
            self._known.setdefault(proc.pid, proc)
        return procs

    def rss(self) -> int:
        """Resident set size of the whole tree, summed (shared pages count per process)."""
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        self.peak_rss = max(self.peak_rss, total)
        return total

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the worker (a warm shutdown everywhere), then SIGKILL what is left."""
        if self._proc is None:
            return
        self.processes()
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for proc in self._known.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.is_running():
                    proc.kill()
        self._proc = None


class Producer:
    """``python -m bench.producer FRAMEWORK`` as a subprocess, driven by JSON lines."""

    def __init__(self, framework: str, env: dict[str, str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self._err = log.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.producer", framework],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
        )
        self.framework, self.log = framework, log
        self.read()  # {"ready": true} once the app module imported

    def send(self, op: str, **args: Any) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
        self._proc.stdin.flush()

    def read(self, timeout: float = 900.0) -> dict[str, Any]:
        """The next reply; BenchError when none comes within ``timeout`` seconds."""
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        if not ready:
            raise BenchError(f"{self.framework} producer gave no answer in {timeout:.0f} s")
        line = self._proc.stdout.readline()
        if not line:
            self._err.flush()
            tail = self.log.read_text(errors="replace").strip().splitlines()[-6:]
            raise BenchError(f"{self.framework} producer died:\n" + "\n".join(tail))
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise BenchError(f"{self.framework} producer: {reply['error']}")
        return reply

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.send(op, **args)
        return self.read()

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self.send("quit")
                self._proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._err.close()


class DelayServer:
    """W7's server (``python -m bench.delay PORT``): answers each line 10 ms later."""

    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log = port, log
        self.address = f"127.0.0.1:{port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DelayServer:
        import socket

        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "bench.delay", str(self.port)],
                cwd=ROOT,
                env=worker_env({}),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BenchError(f"the delay server exited; see {self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BenchError(f"the delay server did not listen on {self.address} within 10 s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
