from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from taskq.broker.base import Envelope
from taskq.errors import ContentDisallowed, DecodeError
from taskq.message import MALFORMED_CONTENT_TYPE, TaskMessage, decode, encode


def test_protocol_2_layout_matches_celery() -> None:
    eta = datetime(2030, 1, 1, tzinfo=timezone.utc)
    msg = TaskMessage(
        id="abc", task="proj.add", args=(1, 2), kwargs={"z": 3}, eta=eta, time_limit=10
    )
    env = encode(msg, priority=5)
    assert env.content_type == "application/json"
    assert env.properties["correlation_id"] == "abc"
    assert env.properties["priority"] == 5
    h = env.headers
    assert (h["lang"], h["task"], h["id"], h["root_id"], h["retries"]) == (
        "py",
        "proj.add",
        "abc",
        "abc",
        0,
    )
    assert h["eta"] == "2030-01-01T00:00:00+00:00"
    assert h["timelimit"] == [10, None]
    assert h["argsrepr"] == "(1, 2)" and h["kwargsrepr"] == "{'z': 3}"
    assert h["origin"].startswith("gen")
    args, kwargs, embed = json.loads(env.body)
    assert (args, kwargs) == ([1, 2], {"z": 3})
    assert set(embed) == {"callbacks", "errbacks", "chain", "chord"}


def test_round_trip() -> None:
    msg = TaskMessage(id="i", task="t", args=(1,), kwargs={"a": [1]}, retries=2, group="g")
    back = decode(encode(msg), ["json"])
    assert (back.id, back.task, back.args, back.kwargs, back.retries, back.group) == (
        "i",
        "t",
        (1,),
        {"a": [1]},
        2,
        "g",
    )


def test_msgpack_only_when_accepted() -> None:
    env = encode(TaskMessage(id="i", task="t", args=(1,)), serializer="msgpack")
    assert env.content_type == "application/x-msgpack"
    assert decode(env, ["json", "msgpack"]).args == (1,)
    with pytest.raises(ContentDisallowed, match="not in accept_content"):
        decode(env, ["json"])


def test_pickle_refused_by_default() -> None:
    env = encode(TaskMessage(id="i", task="t"), serializer="pickle")
    with pytest.raises(ContentDisallowed):
        decode(env, ["json"])


@pytest.mark.parametrize(
    ("headers", "body", "error"),
    [
        ({"id": "x"}, b"[[], {}, {}]", "no 'task' header"),
        ({"task": "t"}, b"[[], {}, {}]", "no 'id' header"),
        ({"task": "t", "id": "x"}, b'{"a": 1}', "body must be"),
        ({"task": "t", "id": "x"}, b'["notalist", {}, {}]', "args must be a list"),
        ({"task": "t", "id": "x"}, b"[[], [], {}]", "kwargs must be a mapping"),
        ({"task": "t", "id": "x"}, b"[[], {}, {", "Could not decode"),
        ({"task": "t", "id": "x", "eta": "tomorrow"}, b"[[], {}, {}]", "not an ISO 8601"),
    ],
)
def test_malformed_messages_say_what_is_wrong(
    headers: dict[str, str], body: bytes, error: str
) -> None:
    with pytest.raises(DecodeError, match=error):
        decode(Envelope(body, "application/json", "utf-8", headers), ["json"])


def test_transport_flagged_malformed_payload() -> None:
    env = Envelope(b"\x00junk", MALFORMED_CONTENT_TYPE, "binary", {"x-taskq-error": "not JSON"})
    with pytest.raises(DecodeError, match="not JSON"):
        decode(env, ["json"])


def test_protocol_1_is_read() -> None:
    body = json.dumps({"task": "t", "id": "old", "args": [1], "kwargs": {}, "retries": 1}).encode()
    msg = decode(Envelope(body, "application/json", "utf-8", {}), ["json"])
    assert (msg.task, msg.id, msg.args, msg.retries) == ("t", "old", (1,), 1)
