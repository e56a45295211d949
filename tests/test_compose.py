"""docker-compose.yml would run (issue 11, point 9).

No Docker engine runs here, so: the file is validated against the Compose
Specification's JSON schema (the copy check-jsonschema ships, a dev dependency);
its shape is checked (one image built once, healthchecks and the conditions that
wait for them, restart policies, a worker on RabbitMQ); and each taskq service's
command runs here with the file's environment, its host names pointed at local
servers (a private redis-server, a RabbitMQ vhost of the test's own), until beat's
periodic task has run on the worker. The healthcheck commands run against the
local servers as they are.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests import proc, servers
from tests.faults.redis_server import PrivateRedis
from tests.waiting import wait_until

pytestmark = pytest.mark.slow  # subprocesses, workers or servers: the full tier


yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SERVERS = ("redis", "rabbitmq")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves <<: merges
    return loaded


def taskq_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the image the file builds."""
    (image,) = {s["image"] for s in compose["services"].values() if "build" in s}
    return {n: s for n, s in compose["services"].items() if s.get("image") == image}


def tool(name: str) -> str:
    """A command-line tool; skip (fail under CI) when it is missing."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        message = f"{name} is not installed"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so this fails instead of skipping)")
        pytest.skip(message)
    return found


def test_the_file_follows_the_compose_specification() -> None:
    pytest.importorskip("check_jsonschema")
    checker = Path(sys.executable).parent / "check-jsonschema"
    out = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_one_image_built_once_with_healthchecks_and_restart_policies(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert [name for name, s in services.items() if "build" in s] == ["worker"]
    ours = taskq_services(compose)
    assert set(ours) == {"worker", "beat", "dashboard"}
    for name in SERVERS:
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    for name, service in ours.items():
        assert service["depends_on"] == {s: {"condition": "service_healthy"} for s in SERVERS}
        assert service["command"][:3] == ["taskq", "-A", "proj"], name
    assert all(s.get("restart") == "unless-stopped" for s in services.values())
    worker = ours["worker"]
    assert worker["command"][3] == "worker"
    assert worker["environment"]["TASKQ_BROKER_URL"].startswith("amqp://")


def test_the_dashboard_is_authenticated_and_published_on_loopback_only(
    compose: dict[str, Any],
) -> None:
    dashboard = compose["services"]["dashboard"]
    assert dashboard["command"][3:] == ["dashboard", "--host", "0.0.0.0", "--port", "5555"]
    # Compose refuses to start without the token (the ${VAR:?message} form).
    assert dashboard["environment"]["TASKQ_DASHBOARD_TOKEN"].startswith("${TASKQ_DASHBOARD_TOKEN:?")
    assert dashboard["ports"] == ["127.0.0.1:5555:5555"]
    assert (
        dashboard["environment"]["TASKQ_BROKER_URL"]
        == (compose["services"]["worker"]["environment"]["TASKQ_BROKER_URL"])
    )


def test_the_dockerfile_installs_taskq_as_users_do() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    copied = [line.split()[1:-1] for line in lines if line.startswith("COPY ")]
    for sources in copied:
        for source in sources:
            assert (ROOT / source).exists(), source
    installs = [line for line in lines if "pip install" in line]
    assert installs and all(" -e " not in line for line in installs)
    assert 'CMD ["taskq", "-A", "proj", "worker", "-l", "info"]' in lines


@pytest.fixture
def vhost(unique: str) -> Iterator[str]:
    """A RabbitMQ vhost of this test's own, so its queues touch no one else's."""
    servers.require("amqp")
    ctl = tool("rabbitmqctl")
    name = f"taskq-compose-{unique}"
    subprocess.run([ctl, "add_vhost", name], check=True, capture_output=True, timeout=60)
    subprocess.run(
        [ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    yield name
    subprocess.run([ctl, "delete_vhost", name], capture_output=True, timeout=60)


def here(url: str, redis: PrivateRedis, vhost: str) -> str:
    """``url`` with the compose host names pointed at this test's servers; the
    dashboard's token (``${VAR:?...}``, which Compose fills in) becomes one."""
    if url.startswith("${"):
        return "compose-test-token"
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    at = f"{userinfo}@" if userinfo else ""
    if parts.hostname == "redis":
        return urlunsplit(parts._replace(netloc=f"{at}127.0.0.1:{redis.port}"))
    if parts.hostname == "rabbitmq":
        return urlunsplit(parts._replace(netloc=f"{at}127.0.0.1:5672", path=f"/{vhost}"))
    raise AssertionError(f"a URL to a host the file does not define: {url}")


def test_the_services_commands_run_against_local_servers(
    compose: dict[str, Any], tmp_path: Path, vhost: str
) -> None:
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    app = tmp_path / "app"  # the image's /app: a copy of examples/
    shutil.copytree(ROOT / "examples", app, ignore=shutil.ignore_patterns("*.sqlite3*"))
    running: dict[str, proc.Proc] = {}
    environ = {}
    try:
        for name, service in taskq_services(compose).items():
            environ = proc.env(
                {k: here(v, redis, vhost) for k, v in service["environment"].items()}
            )
            argv = [*proc.TASKQ, *service["command"][1:]]  # `taskq` from this venv
            if name == "dashboard":  # on loopback and a free port: this machine is shared
                argv[argv.index("--host") + 1] = "127.0.0.1"
                argv[argv.index("--port") + 1] = str(dashboard_port := free_port())
            running[name] = proc.Proc(argv, app, environ)
        running["worker"].wait_for("ready.", timeout=30)
        running["beat"].wait_for("Sending due task heartbeat (proj.heartbeat)", timeout=30)
        running["worker"].wait_for("Task proj.heartbeat[", timeout=30)
        running["worker"].wait_for("succeeded", timeout=30)
        sent = proc.run(app, environ, "-A", "proj", "call", "proj.add", "--args", "[2, 3]")
        shown = proc.run(app, environ, "-A", "proj", "result", sent.stdout.strip(), "--wait")
        assert '"result": 5' in shown.stdout, sent.stderr + shown.stderr
        running["dashboard"].wait_for("taskq dashboard on", timeout=30)
        stats = f"http://127.0.0.1:{dashboard_port}/api/stats"
        asked = urllib.request.Request(
            stats, headers={"Authorization": "Bearer compose-test-token"}
        )
        wait_until(lambda: answers(asked), 20, "the dashboard answering")
    finally:
        for name, process in running.items():
            assert process.stop() == 0, f"{name}:\n{process.output}"
        redis.stop()
    assert "amqp://guest:***@127.0.0.1:5672/" + vhost in running["worker"].output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(request: urllib.request.Request) -> bool:
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.mark.parametrize("name", SERVERS)
def test_the_healthchecks_pass_against_the_local_servers(
    compose: dict[str, Any], name: str
) -> None:
    servers.require("redis" if name == "redis" else "amqp")
    command = compose["services"][name]["healthcheck"]["test"][1:]
    out = subprocess.run([tool(command[0]), *command[1:]], capture_output=True, timeout=60)
    assert out.returncode == 0, out
