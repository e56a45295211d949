"""The dashboard's parts that need no server: options and their refusals, the
guard (authentication, CSRF, Host names), the per-minute history, charts, task
search and workflow trees. The browser tests are in test_dashboard_browser.py."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from click.testing import CliRunner

from taskq import App
from taskq.cli import main
from taskq.dashboard.history import History
from taskq.dashboard.options import DashboardOptions, is_loopback, parse_basic_auth
from taskq.errors import ConfigurationError
from taskq.events.state import TaskState

pytest.importorskip("starlette")
pytest.importorskip("jinja2")

from starlette.requests import Request  # noqa: E402

from taskq.dashboard import pages  # noqa: E402
from taskq.dashboard.guard import Guard  # noqa: E402
from taskq.dashboard.monitor import Monitor  # noqa: E402


def request(path: str = "/", host: str = "127.0.0.1:5555", **headers: str) -> Request:
    query = path.partition("?")[2]
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": path.partition("?")[0],
        "query_string": query.encode(),
        "headers": [(b"host", host.encode())]
        + [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "example.com", ""])
def test_other_hosts_need_authentication(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigurationError, match="without authentication.*--token"):
        DashboardOptions(host=host).check()
    DashboardOptions(host=host, token="s3cret").check()
    DashboardOptions(host=host, basic_auth=("ops", "pw")).check()


def test_option_mistakes_are_named() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        DashboardOptions(token="a", basic_auth=("u", "p")).check()
    with pytest.raises(ConfigurationError, match="USER:PASSWORD"):
        parse_basic_auth("no-colon")
    with pytest.raises(ConfigurationError, match="USER:PASSWORD"):
        parse_basic_auth(":password")
    assert parse_basic_auth("ops:pa:ss") == ("ops", "pa:ss")
    assert "s3cret" not in repr(DashboardOptions(token="s3cret"))


def test_the_cli_refuses_a_public_address_without_auth() -> None:
    out = CliRunner().invoke(main, ["-A", "tests.sample_config", "dashboard", "--host", "0.0.0.0"])
    assert out.exit_code == 2, out.output
    assert "Refusing to listen on '0.0.0.0' without authentication" in out.output
    out = CliRunner().invoke(
        main, ["dashboard", "--basic-auth", "nocolon"], env={"TASKQ_DASHBOARD_TOKEN": ""}
    )
    assert out.exit_code == 2 and "USER:PASSWORD" in out.output


def test_without_auth_only_loopback_host_names_are_answered() -> None:
    guard = Guard(DashboardOptions())
    assert guard.refusal(request(host="127.0.0.1:5555")) is None
    assert guard.refusal(request(host="localhost:5555")) is None
    refused = guard.refusal(request(host="rebound.attacker.example:5555"))
    assert refused is not None and refused.status_code == 421


def test_a_token_is_checked_and_a_good_one_sets_a_cookie() -> None:
    guard = Guard(DashboardOptions(token="s3cret"))
    assert guard.refusal(request()).status_code == 401  # type: ignore[union-attr]
    assert guard.refusal(request("/?token=nope")).status_code == 401  # type: ignore[union-attr]
    assert guard.refusal(request(authorization="Bearer nope")).status_code == 401  # type: ignore[union-attr]
    assert guard.refusal(request(authorization="Bearer s3cret")) is None
    signed_in = guard.refusal(request("/tasks?state=FAILURE&token=s3cret"))
    assert signed_in is not None and signed_in.status_code == 303
    assert signed_in.headers["location"] == "/tasks?state=FAILURE"
    cookie = signed_in.headers["set-cookie"]
    assert "s3cret" not in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    value = cookie.split(";", 1)[0]
    assert guard.refusal(request(cookie=value)) is None
    assert guard.refusal(request(cookie="taskq_dashboard=forged")) is not None


def test_basic_auth() -> None:
    guard = Guard(DashboardOptions(basic_auth=("ops", "pw")))

    def basic(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    refused = guard.refusal(request())
    assert refused is not None and refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Basic")
    assert guard.refusal(request(authorization=basic("ops:wrong"))) is not None
    assert guard.refusal(request(authorization=basic("other:pw"))) is not None
    assert guard.refusal(request(authorization=basic("ops:pw"))) is None


def test_csrf() -> None:
    guard = Guard(DashboardOptions())
    assert guard.csrf_refusal(request(), guard.csrf_token) is None
    assert guard.csrf_refusal(request(), None) is not None
    assert guard.csrf_refusal(request(), "forged") is not None
    other = request(origin="http://attacker.example")
    assert guard.csrf_refusal(other, guard.csrf_token) is not None
    same = request(origin="http://127.0.0.1:5555")
    assert guard.csrf_refusal(same, guard.csrf_token) is None
    assert Guard(DashboardOptions()).csrf_token != guard.csrf_token  # per process


def test_history_keeps_one_hour_in_sixty_buckets() -> None:
    history = History()
    start = 1_000_000 * 60.0
    for minute in range(90):
        history.record(False, start + minute * 60)
        history.record(minute % 2 == 0, start + minute * 60 + 1)
    series = history.series(start + 89 * 60)
    assert len(series) == 60
    assert [m.done for m in series] == [2] * 60
    assert series[-1].failed == 0 and series[-2].failed == 1
    assert history.series(start + 200 * 60)[-1].done == 0  # an hour later: all zeros


def test_chart_points_fit_the_box() -> None:
    drawn = pages.chart([0.0, 5.0, 10.0], "tasks/min")
    xs_ys = [tuple(map(float, p.split(","))) for p in drawn["points"].split()]
    assert xs_ys[0] == (0.0, pages.CHART_HEIGHT) and xs_ys[-1][0] == pages.CHART_WIDTH
    assert min(y for _, y in xs_ys) >= 0


def monitor_with(*tasks: TaskState) -> Monitor:
    monitor = Monitor(App("dash", broker="memory://"), max_tasks=100)
    for clock, task in enumerate(tasks, 1):
        monitor.handle(
            {
                "type": "task-received",
                "uuid": task.uuid,
                "name": task.name,
                "root_id": task.root_id,
                "parent_id": task.parent_id,
                "hostname": "w1@h",
                "timestamp": 1000.0 + clock,
                "clock": clock,
                "local_received": 1000.0 + clock,
            }
        )
    return monitor


def test_task_search_and_the_workflow_tree() -> None:
    monitor = monitor_with(
        TaskState("a", name="proj.add", root_id="a"),
        TaskState("b", name="proj.mul", root_id="a", parent_id="a"),
        TaskState("c", name="proj.add", root_id="a", parent_id="b"),
        TaskState("z", name="proj.other"),
    )
    found = pages.tasks(monitor, {"name": "add"})
    assert sorted(t.uuid for t in found["tasks"]) == ["a", "c"]
    assert [t.uuid for t in pages.tasks(monitor, {"id": "z", "state": "received"})["tasks"]] == [
        "z"
    ]
    assert pages.tasks(monitor, {"worker": "nobody"})["total"] == 0
    shown = pages.task(monitor, "c")
    tree = shown["tree"]
    assert tree.task.uuid == "a"
    assert tree.children[0].task.uuid == "b" and tree.children[0].children[0].task.uuid == "c"
    assert pages.task(monitor, "z")["tree"] is None


def test_the_monitor_is_bounded_and_records_lag() -> None:
    monitor = monitor_with(*(TaskState(str(i), name="t") for i in range(250)))
    assert len(monitor.fleet.tasks()) == 100
    assert monitor.lag()["samples"] == 250
