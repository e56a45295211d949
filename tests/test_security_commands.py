"""Remote control under ``security_keys``: commands signed by taskq's client run,
anything else (unsigned, as Celery's tools send them; altered; replayed; too old)
is refused, and events hide what encryption hides."""

from __future__ import annotations

from typing import Any

import kombu
import pytest

from taskq import App
from taskq.control.mailbox import mailbox
from taskq.errors import SecurityError
from taskq.events import EventDispatcher, redacted_fields
from taskq.events.dispatcher import REDACTED
from taskq.security import Keyring
from taskq.security.commands import SIGNATURE, WINDOW, CommandVerifier, sign_command
from taskq.testing import running_worker
from tests import servers

KEY = "control-secret-0123456789abcdef01234"
OTHER = "another-secret-0123456789abcdef0123"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def keyring(secret: str = KEY) -> Keyring:
    return Keyring.from_settings({"k": secret}, None)


def test_a_signed_command_runs_once_and_a_replay_is_refused() -> None:
    clock = Clock()
    verifier = CommandVerifier(keyring(), clock=clock)
    signed = sign_command(keyring(), "rate_limit", {"task_name": "t", "rate_limit": "1/s"},
                          ["w@h"], now=clock.now)  # fmt: skip
    assert verifier.check("rate_limit", signed, ["w@h"]) == {"task_name": "t", "rate_limit": "1/s"}
    with pytest.raises(SecurityError, match="replayed"):
        verifier.check("rate_limit", signed, ["w@h"])


@pytest.mark.parametrize(
    ("method", "arguments", "destination", "error"),
    [
        ("shutdown", {}, ["w@h"], "does not match"),  # another method
        ("rate_limit", {"task_name": "t", "rate_limit": "99/s"}, ["w@h"], "does not match"),
        ("rate_limit", {"task_name": "t", "rate_limit": "1/s"}, None, "does not match"),
    ],
)
def test_an_altered_command_is_refused(
    method: str, arguments: dict[str, Any], destination: list[str] | None, error: str
) -> None:
    clock = Clock()
    signed = sign_command(keyring(), "rate_limit", {"task_name": "t", "rate_limit": "1/s"},
                          ["w@h"], now=clock.now)  # fmt: skip
    forged = {**arguments, SIGNATURE: signed[SIGNATURE]}
    with pytest.raises(SecurityError, match=error):
        CommandVerifier(keyring(), clock=clock).check(method, forged, destination)


def test_unsigned_old_and_foreign_commands_are_refused() -> None:
    clock = Clock()
    verifier = CommandVerifier(keyring(), clock=clock)
    with pytest.raises(SecurityError, match="not signed"):
        verifier.check("shutdown", {}, None)
    old = sign_command(keyring(), "ping", {}, None, now=clock.now - WINDOW - 1)
    with pytest.raises(SecurityError, match="outside the 60s window"):
        verifier.check("ping", old, None)
    foreign = sign_command(Keyring.from_settings({"x": OTHER}, None), "ping", {}, None, clock.now)
    with pytest.raises(SecurityError, match="key 'x', which this worker does not have"):
        verifier.check("ping", foreign, None)
    with pytest.raises(SecurityError, match="malformed"):
        verifier.check("ping", {SIGNATURE: "0" * 64}, None)
    roll_out = CommandVerifier(keyring(), accept_unsigned=True, clock=clock)
    assert roll_out.check("ping", {}, None) == {}


def test_events_hide_what_encryption_hides() -> None:
    dispatcher = EventDispatcher(
        lambda: kombu.Connection("memory://"),
        "w@h",
        task_events=True,
        redact=redacted_fields(encrypt=True, encrypt_results=True),
    )
    fields: dict[str, Any] = {"uuid": "1", "args": "('alice', 100)", "result": "'paid'"}
    event = dispatcher.event("task-received", fields)
    assert event["args"] == event["result"] == REDACTED and event["uuid"] == "1"
    assert redacted_fields(encrypt=True, encrypt_results=False) == {"args", "kwargs"}
    assert redacted_fields(encrypt=False, encrypt_results=False) == frozenset()


@pytest.mark.slow  # starts a worker
def test_a_signing_worker_answers_its_client_and_refuses_celerys_unsigned_commands(
    unique: str,
) -> None:
    servers.require("redis")
    app = App("signed", broker=servers.REDIS_URL, task_default_queue=f"q-{unique}",
              security_keys={"k": KEY})  # fmt: skip
    name = f"signed-{unique}@x"
    with running_worker(app, pool="threads", hostname=name) as worker:
        assert worker.remote is not None and worker.remote.ready.wait(10)
        assert app.control.ping(destination=[name], timeout=5) == [{name: {"ok": "pong"}}]
        # What Celery's `celery control shutdown` sends: no signature.
        with kombu.Connection(servers.REDIS_URL) as conn:
            box = mailbox(app.conf)(conn)
            replies = box.call([name], "shutdown", {}, timeout=5)
        assert "refused" in replies[0][name]["error"] and "not signed" in replies[0][name]["error"]
        assert app.control.ping(destination=[name], timeout=5) == [{name: {"ok": "pong"}}]
    app.close()
