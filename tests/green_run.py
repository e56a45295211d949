"""Run pytest in a process monkey-patched for a green pool, as ``taskq worker -P
gevent`` runs a worker: ``python -m tests.green_run gevent PYTEST_ARGS...``.

The patch comes first, before pytest, taskq's modules, kombu or redis-py are
imported. Test modules that need such a process (the contract suite, the green
pools' own tests) check ``taskq.monkey.green()`` and, in an unpatched process,
run themselves this way with ``run_patched``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def run_patched(pool: str, test_file: str, timeout: float = 240) -> str:
    """Run ``test_file``'s tests in a process patched for ``pool``; fail unless they
    all pass (and some ran). Returns pytest's summary line."""
    args = [
        sys.executable,
        "-m",
        "tests.green_run",
        pool,
        test_file,
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    assert done.returncode == 0, f"{pool} run of {test_file} failed:\n{done.stdout}\n{done.stderr}"
    assert " passed" in summary and "failed" not in summary, done.stdout
    return summary


def main() -> int:
    from taskq import monkey

    pool = sys.argv[1]
    if not monkey.patch_for(pool):
        print(f"could not patch for {pool!r}: is it installed?", file=sys.stderr)
        return 2
    import pytest

    return int(pytest.main(sys.argv[2:]))


if __name__ == "__main__":
    sys.exit(main())
