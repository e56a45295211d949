"""The dashboard in a real browser (issue 15): headless Chromium driven by Playwright.

One worker (prefork, task events on) and one dashboard (token authentication) run
as subprocesses for the whole module, on a redis-server of the module's own (events
and beat's lease are per server, so no other worker or beat on the machine shows
up or interferes); each test drives the pages as a person would and waits on what
the page shows (Playwright's ``expect`` polls until its timeout), never on sleeps.

The browser is Debian's ``chromium`` (``/usr/bin/chromium``, installed by
``.ci/run``): Playwright never downloads one. Without it, or without Playwright,
these tests skip, and fail when ``CI`` is set.

With ``TASKQ_DASHBOARD_SCREENSHOTS=<dir>`` each page is also saved there as
``dashboard-<page>.png`` (what docs/img/ holds; see docs/monitoring.md).
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from taskq import App
from tests import proc, servers
from tests.faults.redis_server import PrivateRedis
from tests.waiting import wait_until

pytestmark = pytest.mark.slow  # a worker, a dashboard and a browser: the full tier

CHROMIUM = os.environ.get("TASKQ_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "dashboard-test-" + uuid.uuid4().hex
#: How long a page may take to show a change (the dashboard's goal is 2 s).
SHOWS = 10_000
SHOTS = os.environ.get("TASKQ_DASHBOARD_SCREENSHOTS")

PROJECT = '''
import redis

from taskq import App

app = App("proj", **{settings!r})


@app.task
def add(x, y):
    return x + y


@app.task
def echo(value):
    return value


@app.task
def fail(value):
    raise ValueError(f"could not take {{value}}")


@app.task
def hold(key):
    """Runs until the test pushes to ``key`` (at most 60 s)."""
    redis.Redis.from_url({url!r}).blpop([key], timeout=60)
    return "released"
'''


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(what + " (CI is set, so this fails instead of skipping)")
    pytest.skip(what)


def _free_port() -> int:
    wanted = os.environ.get("TASKQ_TEST_DASHBOARD_PORT")
    if wanted:
        return int(wanted)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Fleet:
    """The module's app settings, worker and dashboard."""

    def __init__(self, tag: str, root: Path, redis_url: str) -> None:
        self.tag = tag
        self.redis_url = redis_url
        self.root = root
        self.queue = f"q-dash-{tag}"
        self.parked_queue = f"q-dash-parked-{tag}"
        self.hostname = f"dash-{tag}@%h"
        self.settings: dict[str, Any] = {
            "broker": redis_url,
            "backend": redis_url,
            "task_default_queue": self.queue,
            "broker_transport_options": {"key_prefix": f"taskq-test-{tag}:"},
            "worker_lease_timeout": 10.0,
            "beat_schedule": {
                "heartbeat": {"task": "proj.add", "schedule": 2.0, "args": (1, 1)},
            },
        }
        self.app = App("proj", **self.settings)
        self.base = ""

    def key(self, name: str) -> str:
        return f"taskq-test-{self.tag}:{name}"

    def release(self, key: str) -> None:
        """Let the ``hold`` tasks waiting on ``key`` finish."""
        client = redis.Redis.from_url(self.redis_url)
        client.rpush(key, "go")
        client.close()

    def get(self, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    servers.require("redis")
    root = tmp_path_factory.mktemp("dashboard")
    server = PrivateRedis(root / "redis")
    server.start()
    fleet = Fleet(uuid.uuid4().hex[:10], root, server.url)
    (root / "proj.py").write_text(PROJECT.format(settings=fleet.settings, url=server.url))
    environ = proc.env()
    worker = proc.Proc(
        [*proc.TASKQ, "-A", "proj", "worker", "-l", "info", "-E", "-c", "2", "-n", fleet.hostname],
        root,
        environ,
    )
    port = _free_port()
    dashboard = proc.Proc(
        [*proc.TASKQ, "-A", "proj", "dashboard", "--port", str(port)],
        root,
        proc.env({"TASKQ_DASHBOARD_TOKEN": TOKEN}),
    )
    fleet.base = f"http://127.0.0.1:{port}"
    try:
        worker.wait_for("ready.", timeout=30)
        dashboard.wait_for("taskq dashboard on", timeout=30)

        def answers() -> bool:
            try:
                return fleet.get("/api/stats")[0] == 200
            except OSError:
                return False

        wait_until(answers, 20, "the dashboard answering")
        yield fleet
    finally:
        stopped = dashboard.stop()
        worker.stop()
        fleet.app.close()
        server.stop()
        assert stopped == 0, dashboard.output


@pytest.fixture(scope="module")
def browser(fleet: Fleet) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[dev]')")
    if not os.path.exists(CHROMIUM):
        _missing(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, fleet: Fleet) -> Iterator[Any]:
    """A page signed in with the token (``?token=`` once sets the cookie)."""
    context = browser.new_context(base_url=fleet.base, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(SHOWS)
    response = page.goto(f"/?token={TOKEN}")
    assert response is not None and response.ok
    yield page
    context.close()


def shoot(page: Any, name: str) -> None:
    """Save the page as ``dashboard-<name>.png`` when screenshots are asked for."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"dashboard-{name}.png"), full_page=True)


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=SHOWS)
    return playwright_expect(locator)


def test_the_overview_loads_with_a_worker_running(page: Any, fleet: Fleet) -> None:
    # Other workers on the shared Redis may show too: events are broadcast per server.
    ours = page.locator("#workers tr", has_text=fleet.hostname.split("@")[0])
    expect(ours).to_contain_text("up")
    expect(page.locator("#workers-up")).not_to_have_text("0")
    expect(page.locator("#queues")).to_contain_text(fleet.queue)
    expect(page.locator("#live-state")).to_have_class("live-state on")


def test_a_sent_task_appears_and_its_state_changes_live(page: Any, fleet: Fleet) -> None:
    page.goto("/tasks")
    page.evaluate("window.notReloaded = true")
    key = fleet.key("release-live")
    result = fleet.app.send_task("proj.hold", (key,))
    state = page.locator(f'tr[data-task="{result.id}"] .state')
    expect(state).to_have_text("STARTED")
    shoot(page, "tasks")
    fleet.release(key)
    expect(state).to_have_text("SUCCESS")
    assert page.evaluate("window.notReloaded") is True  # the live stream did it


def test_a_failing_tasks_traceback_and_workflow_are_shown(page: Any, fleet: Fleet) -> None:
    sig = fleet.app.signature
    workflow = sig("proj.add", (1, 2)) | sig("proj.add", (3,)) | sig("proj.fail")
    result = workflow.apply_async()
    page.goto(f"/tasks/{result.id}")
    expect(page.locator("#task-state")).to_have_text("FAILURE")
    traceback = page.locator("#traceback")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("ValueError: could not take 6")
    tree = page.locator("#tree")  # add -> add -> fail, each the parent of the next
    expect(tree.locator("li")).to_have_count(3)
    expect(tree.locator("li li li")).to_contain_text("proj.fail")
    shoot(page, "task")
    page.goto("/failures")
    expect(page.locator("#failed")).to_contain_text(result.id)


def test_nothing_from_args_or_results_is_rendered_as_markup(page: Any, fleet: Fleet) -> None:
    hostile = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    result = fleet.app.send_task("proj.echo", (hostile,))
    page.goto(f"/tasks/{result.id}")
    expect(page.locator("#task-state")).to_have_text("SUCCESS")
    expect(page.locator("#task-args")).to_contain_text(hostile)
    expect(page.locator("#task-result")).to_contain_text(hostile)
    page.goto("/tasks?name=proj.echo")
    expect(page.locator("#tasks")).to_contain_text("<script>window.pwned=2</script>")
    assert page.evaluate("window.pwned") is None
    assert page.locator("main img").count() == 0
    assert page.locator("script").count() == 1  # the dashboard's own


def _park_one(fleet: Fleet) -> str:
    """Dead-letter one message of the parked queue (no worker consumes it)."""
    sent = fleet.app.send_task("proj.add", (2, 2), queue=fleet.parked_queue)
    broker = fleet.app.new_broker(f"dash-test-{fleet.tag}")
    try:
        (delivery,) = broker.fetch([fleet.parked_queue], 1, 5.0)
        broker.dead_letter(delivery, "poisoned by the dashboard test")
    finally:
        broker.close()
    return sent.id


def test_the_dlq_requeue_button_requeues(page: Any, fleet: Fleet) -> None:
    task_id = _park_one(fleet)
    page.goto("/failures")
    row = page.locator("#dlq tr", has_text=task_id)
    expect(row).to_contain_text("poisoned by the dashboard test")
    shoot(page, "failures")
    row.locator("button.requeue").click()
    expect(page.locator("#flash")).to_have_text("Requeued 1 message(s).")
    expect(page.locator("#dlq")).not_to_contain_text(task_id)
    depth = fleet.app.broker.queue_depths([fleet.parked_queue])[fleet.parked_queue]
    assert (depth.ready, depth.dead) == (1, 0)


def test_terminate_stops_a_running_task(page: Any, fleet: Fleet) -> None:
    key = fleet.key("never-released")
    result = fleet.app.send_task("proj.hold", (key,))
    page.goto("/workers")
    ours = page.locator(f'section.worker[data-worker^="dash-{fleet.tag}@"]')
    expect(ours.locator(".active")).to_contain_text(result.id)
    shoot(page, "workers")
    page.goto(f"/tasks/{result.id}")
    expect(page.locator("#task-state")).to_have_text("STARTED")
    page.locator("#terminate").click()
    expect(page.locator("#flash")).to_contain_text(f"Terminated {result.id}")
    expect(page.locator("#task-state")).to_have_text("REVOKED")
    wait_until(lambda: result.state == "REVOKED", 10, "the backend saying REVOKED")
    # The worker lives on and runs the next task.
    assert fleet.app.send_task("proj.add", (1, 2)).get(timeout=10) == 3


def test_pool_grow_and_rate_limit_buttons_steer_the_worker(page: Any, fleet: Fleet) -> None:
    page.goto("/workers")
    ours = page.locator(f'section.worker[data-worker^="dash-{fleet.tag}@"]')
    expect(ours.locator(".concurrency")).to_have_text("2")
    ours.locator("button.grow").click()
    expect(page.locator("#flash")).to_contain_text(f"Pool grow by 1: dash-{fleet.tag}@")
    expect(ours.locator(".concurrency")).to_have_text("3")  # the next stats poll
    ours.locator("button.shrink").click()
    expect(ours.locator(".concurrency")).to_have_text("2")
    ours.locator('input[name="task"]').fill("proj.add")
    ours.locator('input[name="rate"]').fill("100/m")
    ours.locator("button", has_text="Set rate limit").click()
    expect(page.locator("#flash")).to_contain_text("Rate limit of proj.add set to 100/m")
    registered = fleet.app.control.inspect(timeout=2.0).registered("rate_limit") or {}
    ours_registered = [v for k, v in registered.items() if k.startswith(f"dash-{fleet.tag}@")]
    assert ours_registered and "100/m" in str(ours_registered[0])


def test_the_schedules_page_shows_beat_entries_and_their_last_run(page: Any, fleet: Fleet) -> None:
    page.goto("/schedules")
    table = page.locator("#schedules")
    expect(table).to_contain_text("heartbeat")
    expect(table).to_contain_text("every: 2 seconds")
    expect(table).to_contain_text("never")
    beat = proc.Proc([*proc.TASKQ, "-A", "proj", "beat", "-l", "info"], fleet.root, proc.env())
    try:
        beat.wait_for("Sending due task heartbeat", timeout=20)
        row = table.locator("tr", has_text="heartbeat")
        expect(row.locator(".state")).to_have_text("SUCCESS")  # the last run's, live
        expect(row).not_to_contain_text("never")
    finally:
        assert beat.stop() == 0, beat.output
    shoot(page, "schedules")


def test_the_overview_draws_charts_and_queue_depths(page: Any, fleet: Fleet) -> None:
    results = [fleet.app.send_task("proj.add", (i, i)) for i in range(20)]
    failed = [fleet.app.send_task("proj.fail", (i,)) for i in range(3)]
    for done in results:
        done.get(timeout=10)
    _park_one(fleet)
    page.goto("/")
    expect(page.locator("#queues")).to_contain_text(fleet.parked_queue)
    parked_row = page.locator("#queues tr", has_text=fleet.parked_queue)
    expect(parked_row.locator("td").nth(3)).to_have_text("1")  # dead-lettered
    assert page.locator("svg polyline").count() == 2
    wait_until(lambda: all(f.state == "FAILURE" for f in failed), 10, "the failures")
    expect(page.locator("#hour-failed")).not_to_have_text("0")
    expect(page.locator("#hour-done")).not_to_have_text("0")
    shoot(page, "overview")


def test_auth_refuses_a_wrong_token(browser: Any, fleet: Fleet) -> None:
    context = browser.new_context(base_url=fleet.base)
    try:
        page = context.new_page()
        for path in ("/?token=wrong", "/", "/tasks", "/metrics", "/live"):
            response = page.goto(path)
            assert response is not None and response.status == 401, path
        assert "Wrong token" in page.goto("/?token=wrong").text()
    finally:
        context.close()
    assert fleet.get("/", token="wrong")[0] == 401
    status, body = fleet.get("/metrics")
    assert status == 200 and b"taskq_tasks_total" in body


def test_actions_without_the_csrf_token_are_refused(page: Any, fleet: Fleet) -> None:
    _park_one(fleet)
    parked = fleet.app.broker.queue_depths([fleet.parked_queue])[fleet.parked_queue].dead
    assert parked
    page.goto("/failures")
    csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    url = fleet.base + "/actions/purge"
    refused = [
        page.request.post(url, form={"back": "/failures"}, max_redirects=0),
        page.request.post(url, form={"csrf": "forged"}, max_redirects=0),
        page.request.post(
            url,
            form={"csrf": csrf},
            headers={"Origin": "http://attacker.example"},
            max_redirects=0,
        ),
    ]
    assert [r.status for r in refused] == [403, 403, 403]
    assert "CSRF" in refused[0].text()
    depth = fleet.app.broker.queue_depths([fleet.parked_queue])[fleet.parked_queue]
    assert depth.dead == parked  # nothing was purged
    stats = json.loads(fleet.get("/api/stats")[1])
    assert stats["tasks"] <= stats["max_tasks"]
