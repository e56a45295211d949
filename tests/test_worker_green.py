"""The gevent and eventlet pools: tests/green_pool_cases.py run in a process
patched for each pool first (it needs one, so a plain pytest run does not collect
it), and the entry point's reading of the command line. The contract suite runs
the same way from tests/test_contract.py; process-level behaviour (the ``taskq``
command patching first, the lease under a task that never yields, a missing
library) is in tests/test_green_cli.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from taskq import monkey
from tests.green_run import run_patched

CASES = str(Path(__file__).with_name("green_pool_cases.py"))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(monkey.green() is not None, reason="this is a patched process")
@pytest.mark.parametrize("green", ["gevent", "eventlet"])
def test_the_green_pool_cases_pass_in_a_patched_process(green: str) -> None:
    print(run_patched(green, CASES))


@pytest.mark.parametrize(
    ("argv", "pool"),
    [
        (["-A", "proj", "worker", "-P", "gevent", "-c", "500"], "gevent"),
        (["worker", "-Peventlet"], "eventlet"),
        (["-A", "proj", "worker", "--pool", "gevent"], "gevent"),
        (["worker", "--pool=eventlet", "-l", "info"], "eventlet"),
        (["worker", "-P", "threads"], "threads"),
        (["worker"], None),
        (["call", "-P", "gevent"], None),  # -P is the worker's option only
        (["worker", "--", "-P", "gevent"], None),
    ],
)
def test_the_entry_point_reads_the_pool_from_a_worker_command_line(
    argv: list[str], pool: str | None
) -> None:
    assert monkey.pool_in(argv) == pool
