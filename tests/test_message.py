from __future__ import annotations

import dataclasses
import json
import pickle
from datetime import datetime, timezone

import msgpack
import pytest

from taskq import serialization
from taskq.broker.base import Envelope
from taskq.context import Context
from taskq.errors import ContentDisallowed, DecodeError, EncodeError
from taskq.message import (
    CONTEXT_NAMES,
    LOST_HEADER,
    MALFORMED_CONTENT_TYPE,
    TaskMessage,
    decode,
    encode,
    worker_lost_count,
)


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
        ({"task": "t", "id": "x", "eta": "tomorrow"}, b"[[], {}, {}]", "must be an ISO 8601"),
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


# -- issue 12: every field is checked before use ---------------------------------------

_OK = {"task": "t", "id": "x"}


@pytest.mark.parametrize(
    ("header", "value", "error"),
    [
        ("retries", "abc", "header 'retries' must be an integer"),
        ("retries", [1], "header 'retries' must be an integer"),
        ("retries", float("inf"), "header 'retries' must be an integer"),  # JSON 1e400
        ("retries", -1, "header 'retries' must be an integer from 0"),
        ("retries", True, "header 'retries' must be an integer"),
        ("timelimit", 5, "header 'timelimit' must be \\[hard, soft\\]"),
        ("timelimit", {}, "header 'timelimit' must be \\[hard, soft\\]"),
        ("timelimit", ["x", "y"], "header 'timelimit'\\[0\\] must be null or a number"),
        ("timelimit", [1e300, None], "header 'timelimit'\\[0\\] must be null or a number"),
        ("timelimit", [None, float("nan")], "header 'timelimit'\\[1\\] must be null"),
        ("group_index", "1", "header 'group_index' must be an integer"),
        ("eta", 5, "header 'eta' must be an ISO 8601 time string"),
        ("expires", "soon", "header 'expires' must be an ISO 8601 time"),
        ("ignore_result", "yes", "header 'ignore_result' must be true or false"),
        ("root_id", 7, "header 'root_id' must be a string"),
        ("task", ["t"], "header 'task' must be a non-empty string"),
    ],
)
def test_each_header_is_checked_with_a_clear_error(header: str, value: object, error: str) -> None:
    body = b"[[], {}, {}]"
    env = Envelope(body, "application/json", "utf-8", {**_OK, header: value})
    with pytest.raises(DecodeError, match=error):
        decode(env, ["json"])


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'[[], {}, {"callbacks": 5}]', "embed 'callbacks' must be null or a list of signatures"),
        (b'[[], {}, {"chain": [1]}]', "embed 'chain'\\[0\\] must be a signature"),
        (b'[[], {}, {"chord": "c"}]', "embed 'chord' must be a signature"),
        (b"[[], {}, 7]", "the body's embed \\(its third element\\) must be an object"),
        (b"[[], {}, {}, {}]", "the body must be \\[args, kwargs, embed\\]"),
    ],
)
def test_the_body_and_its_embed_are_checked(body: bytes, error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        decode(Envelope(body, "application/json", "utf-8", dict(_OK)), ["json"])


def test_reply_to_and_kwargs_keys_are_checked() -> None:
    env = Envelope(b"[[], {}, {}]", "application/json", "utf-8", dict(_OK), {"reply_to": 5})
    with pytest.raises(DecodeError, match="property 'reply_to' must be a string"):
        decode(env, ["json"])
    pickled = pickle.dumps([[], {1: "x"}, {}])
    env = Envelope(pickled, "application/x-python-serialize", "binary", dict(_OK))
    with pytest.raises(DecodeError, match="kwargs key must be a string"):
        decode(env, ["pickle"])


def test_json_nested_a_thousand_deep_is_refused_not_a_recursion_error() -> None:
    deep = b"[" * 1024 + b"]" * 1024  # 2 KB, as in the issue
    for body in (b"[[" + deep + b"], {}, {}]", b'[[], {"a": ' + deep + b"}, {}]"):
        with pytest.raises(DecodeError, match="nested 10.. levels deep; at most 100"):
            decode(Envelope(body, "application/json", "utf-8", dict(_OK)), ["json"])
    # kombu's path (a body with __type__ markers) and msgpack are limited too.
    marked = b'[[{"__type__": "bytes", "__value__": "x"}, ' + deep + b"], {}, {}]"
    with pytest.raises(DecodeError, match="nested 10.. levels deep"):
        decode(Envelope(marked, "application/json", "utf-8", dict(_OK)), ["json"])
    nested: list[object] = []
    for _ in range(500):
        nested = [nested]
    packed = msgpack.packb([nested, {}, {}])
    with pytest.raises(DecodeError, match="nested deeper than 100 levels"):
        decode(Envelope(packed, "application/x-msgpack", "binary", dict(_OK)), ["msgpack"])
    # Custom headers a transport carried without a JSON parser (AMQP tables).
    env = Envelope(b"[[], {}, {}]", "application/json", "utf-8", {**_OK, "x-deep": nested})
    with pytest.raises(DecodeError, match="header 'x-deep' is nested deeper than 100"):
        decode(env, ["json"])


def test_depth_at_the_limit_passes_and_brackets_in_strings_do_not_count() -> None:
    at_limit = b"[" * 98 + b"]" * 98  # inside [args, ...]: 100 levels in all
    msg = decode(
        Envelope(b"[" + at_limit + b", {}]", "application/json", "utf-8", dict(_OK)), ["json"]
    )
    assert len(msg.args) == 97 or msg.args  # parsed, not refused
    text = json.dumps([["[" * 500, '{"\\"[[['], {}, {}]).encode()
    assert (
        decode(Envelope(text, "application/json", "utf-8", dict(_OK)), ["json"]).args[0]
        == "[" * 500
    )


def test_worker_lost_header_is_a_count() -> None:
    assert worker_lost_count({}) == 0
    assert worker_lost_count({LOST_HEADER: 3}) == 3
    for bad in ("zz", -1, 1.5, [1]):
        with pytest.raises(DecodeError, match="x-taskq-worker-lost"):
            worker_lost_count({LOST_HEADER: bad})


# -- issue 12, item 7: integers of any size are exact or refused -----------------------

BOUNDARIES = [
    2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30, -(10**30), 2**200,
]  # fmt: skip


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_big_integers_round_trip_exactly(serializer: str) -> None:
    msg = TaskMessage(id="i", task="t", args=tuple(BOUNDARIES), kwargs={"n": 2**64})
    back = decode(encode(msg, serializer), ["json", serializer])
    assert back.args == tuple(BOUNDARIES) and back.kwargs == {"n": 2**64}
    assert all(type(n) is int for n in back.args)


def test_msgpack_keeps_64_bit_integers_and_refuses_bigger_ones_clearly() -> None:
    inside = [2**63 - 1, 2**64 - 1, -(2**63)]
    back = decode(encode(TaskMessage(id="i", task="t", args=tuple(inside)), "msgpack"), ["msgpack"])
    assert back.args == tuple(inside)
    for outside in (2**64, -(2**63) - 1):
        with pytest.raises(
            EncodeError, match="msgpack holds integers from -2\\*\\*63 to 2\\*\\*64-1"
        ):
            encode(TaskMessage(id="i", task="t", args=(outside,)), "msgpack")


def test_json_loads_is_exact_past_64_bits_on_the_fast_path() -> None:
    assert serialization.json_loads(b"[18446744073709551616]") == [2**64]
    assert serialization.json_loads(b'{"a": -9223372036854775809}') == {"a": -(2**63) - 1}


# -- issue 18: one declaration of the fields -------------------------------------------


def test_the_declaration_drives_the_message_the_codec_and_the_context() -> None:
    fields = {f.name: f for f in dataclasses.fields(TaskMessage)}
    assert set(fields) - {"extra_headers"} == {f for f in fields if "wire" in fields[f].metadata}
    context = {f.name for f in dataclasses.fields(Context)}
    assert set(CONTEXT_NAMES) <= context
    assert set(CONTEXT_NAMES) == set(fields) - {"shadow", "extra_headers"}
    when = datetime(2031, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    sig = {"task": "s", "args": [], "kwargs": {}, "options": {}}
    full = TaskMessage(
        id="i", task="t", args=(1,), kwargs={"k": 2}, root_id="r", parent_id="p", group="g",
        group_index=3, eta=when, expires=when, retries=4, time_limit=5.0, soft_time_limit=4.0,
        ignore_result=True, callbacks=[sig], errbacks=[sig], chain=[sig], chord=sig,
        reply_to="reply", origin="o", shadow="sh", extra_headers={"x-custom": [1]},
    )  # fmt: skip
    assert decode(encode(full), ["json"]) == full
    assert full.context_values() == {name: getattr(full, name) for name in CONTEXT_NAMES}
