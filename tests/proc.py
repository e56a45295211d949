"""Running ``taskq`` as a user would: subprocesses, waited on by what they print."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

# What the ``taskq`` console script runs (taskq.__main__: patches for green pools first).
TASKQ = [sys.executable, "-m", "taskq"]


def env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")}
    out["PYTHONUNBUFFERED"] = "1"
    out.update(extra or {})
    return out


class Proc:
    """A subprocess whose merged output is collected line by line."""

    def __init__(self, args: list[str], cwd: Path, environ: Mapping[str, str]) -> None:
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            env=dict(environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        """Block until a line containing ``text`` appears; fail with the output so far."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(0.01, left))
            except queue.Empty:
                line = ""
            if line is None:
                raise AssertionError(f"process exited waiting for {text!r}:\n{self.output}")
            if line:
                self.lines.append(line)
                if text in line:
                    return line
            if time.monotonic() >= deadline:
                raise AssertionError(f"{text!r} not printed within {timeout}s:\n{self.output}")

    @property
    def output(self) -> str:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()


@contextmanager
def worker(cwd: Path, environ: Mapping[str, str], *args: str) -> Iterator[Proc]:
    """``taskq -A proj worker`` in ``cwd``, yielded once it says it is ready."""
    proc = Proc([*TASKQ, "-A", "proj", "worker", "-l", "info", *args], cwd, environ)
    try:
        proc.wait_for("ready.")
        yield proc
    finally:
        proc.stop()


def run(
    cwd: Path, environ: Mapping[str, str], *args: str, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TASKQ, *args], cwd=cwd, env=dict(environ), capture_output=True, text=True, timeout=timeout
    )
