"""The ``worker`` command's options: parsed, checked against each other, reported."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskq.cli import JsonFormatter, main


@pytest.fixture
def project(tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"cliproj_{unique}"
    (tmp_path / f"{name}.py").write_text(
        "from taskq import App\n"
        "app = App('cliproj', broker='memory://', backend='memory://')\n"
        "app.task(name='cli.add')(lambda x, y: x + y)\n"
    )
    monkeypatch.chdir(tmp_path)
    yield name


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--autoscale", "ten"], "write MAX,MIN"),
        (["-P", "threads", "--autoscale", "4,2"], "needs the prefork pool"),
        (["-P", "prefork", "--autoscale", "2,4"], "0 < MIN <= MAX"),
        (["-P", "prefork"], "cannot reach 'memory://'"),
        (["-P", "greenlet"], "'greenlet' is not one of"),
        # Not patched: this process imported everything before the pool was named.
        (["-P", "gevent"], "monkey-patched by gevent before the app"),
        (["-P", "eventlet"], "monkey-patched by eventlet before the app"),
        (["--time-limit", "0"], "--time-limit"),
        (["--max-tasks-per-child", "0"], "--max-tasks-per-child"),
    ],
)
def test_bad_worker_options_are_usage_errors(project: str, args: list[str], error: str) -> None:
    result = CliRunner().invoke(main, ["-A", project, "worker", *args])
    assert result.exit_code == 2, result.output
    assert error in result.output


def test_json_formatter_writes_one_object_per_record() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "taskq.worker", logging.ERROR, "f", 1, "Task %s", ("x",), sys.exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "Task x" and entry["level"] == "ERROR"
    assert "ValueError: boom" in entry["exc"]


def test_metrics_without_the_extra_say_which_to_install(
    project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    result = CliRunner().invoke(
        main, ["-A", project, "worker", "-P", "solo", "--metrics-port", "0"]
    )
    assert result.exit_code == 2, result.output
    assert "--metrics-port (worker_metrics_port) needs prometheus_client" in result.output
    assert "pip install 'taskq[metrics]'" in result.output


def test_a_metrics_port_out_of_range_is_a_usage_error(project: str) -> None:
    result = CliRunner().invoke(main, ["-A", project, "worker", "--metrics-port", "70000"])
    assert result.exit_code == 2 and "--metrics-port" in result.output
