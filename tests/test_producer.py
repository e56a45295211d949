"""The producer's lean path builds the messages the plain one did: every field of
``TaskMessage``, the JSON body kombu writes, routes read as documented."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from kombu import serialization as kombu_ser

from taskq import App
from taskq.context import Context, current_request
from taskq.errors import ConfigurationError, EncodeError
from taskq.message import FIELD_NAMES, TaskMessage, encode, new_id
from taskq.producer import CELERY_HEADERS


@pytest.fixture
def app() -> App:
    return App("prod", broker="memory://", backend="memory://", task_default_queue="default")


def test_built_messages_have_every_field_and_equal_the_constructors(app: App) -> None:
    @app.task(name="prod.add", queue="adds", time_limit=5)
    def add(x: int, y: int) -> int:
        return x + y

    options = {"task_id": "t1", "link": add.s(1), "headers": {"x-extra": 1}, "priority": 3}
    msg, queue, priority, _ = app.producer.build("prod.add", (1, 2), {"z": 3}, options, task=add)
    assert set(vars(msg)) == FIELD_NAMES
    fields = {f.name: getattr(msg, f.name) for f in dataclasses.fields(TaskMessage)}
    assert msg == TaskMessage(**fields)
    assert (msg.id, msg.args, msg.kwargs, msg.time_limit, msg.ignore_result) == (
        "t1", (1, 2), {"z": 3}, 5, False,
    )  # fmt: skip
    assert msg.callbacks == [dict(add.s(1))]
    # Celery's own headers go with every message (docs/protocol.md).
    assert msg.extra_headers == {**CELERY_HEADERS, "x-extra": 1}
    assert (queue, priority) == ("adds", 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.id = "other"  # type: ignore[misc]


def test_a_retry_keeps_its_place_and_a_child_names_its_parent(app: App) -> None:
    retry_of = Context(
        id="t", root_id="root", parent_id="parent", group="g", group_index=0, retries=2,
        chain=[{"task": "next"}],
    )  # fmt: skip
    msg, *_ = app.producer.build("prod.x", (), {}, {"task_id": "t"}, retry_of=retry_of)
    assert (msg.root_id, msg.parent_id, msg.group, msg.group_index, msg.retries) == (
        "root", "parent", "g", 0, 3,
    )  # fmt: skip
    assert msg.chain == [{"task": "next"}]

    token = current_request.set(Context(id="running", root_id="first"))
    try:
        child, *_ = app.producer.build("prod.x", (), {}, {})
    finally:
        current_request.reset(token)
    assert (child.parent_id, child.root_id, child.retries) == ("running", "first", 0)


def test_times_are_aware_and_naive_ones_read_in_the_app_timezone(app: App) -> None:
    app.conf.timezone = "Europe/Paris"
    naive = dt.datetime(2030, 1, 1, 12, 0)
    msg, *_ = app.producer.build("prod.x", (), {}, {"eta": naive, "expires": 60})
    assert msg.eta is not None and msg.eta.utcoffset() == dt.timedelta(hours=1)
    assert msg.expires is not None and msg.expires.tzinfo is not None
    plain, *_ = app.producer.build("prod.x", (), {}, {})
    assert (plain.eta, plain.expires) == (None, None)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {}),
        ((1, "two", 3.5, None, True), {"k": [1, {"nested": "é"}]}),
        ((dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc), Decimal("1.5")), {}),
        ((uuid.UUID(int=7), b"raw", b"\xff"), {"when": dt.date(2030, 1, 2)}),
        ((float("nan"), 2**70), {"\u2603": "snow"}),
    ],
)
def test_json_bodies_are_the_bytes_kombu_writes(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    env = encode(TaskMessage(id="i", task="t", args=args, kwargs=kwargs, callbacks=[{"task": "c"}]))
    embed = {"callbacks": [{"task": "c"}], "errbacks": None, "chain": None, "chord": None}
    content_type, encoding, body = kombu_ser.dumps([list(args), kwargs, embed], serializer="json")
    assert (env.content_type, env.content_encoding) == (content_type, encoding)
    assert env.body == body.encode("utf-8")


def test_a_body_the_serializer_cannot_encode_raises_encode_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    for args in ((object(),), (loop,)):
        with pytest.raises(EncodeError, match="json serializer cannot encode"):
            encode(TaskMessage(id="i", task="t", args=args))


def test_routes_are_read_once_until_replaced(app: App) -> None:
    app.conf.task_routes = {"prod.*": {"queue": "globbed"}, "prod.exact": "exact"}

    def queue_of(name: str) -> str:
        return app.producer.build(name, (), {}, {})[1]

    assert (queue_of("prod.exact"), queue_of("prod.other"), queue_of("else")) == (
        "exact", "globbed", "default",
    )  # fmt: skip
    app.conf.task_routes["prod.exact"] = "changed in place"  # not seen: read once, as Celery
    assert queue_of("prod.exact") == "exact"
    app.conf.task_routes = {"prod.exact": "replaced"}
    assert queue_of("prod.exact") == "replaced"
    assert app.producer.build("prod.exact", (), {}, {"queue": "given"})[1] == "given"


def test_a_callable_route_sees_every_call(app: App) -> None:
    seen: list[tuple[Any, ...]] = []

    def by_first_arg(name: str, args: tuple[Any, ...], kwargs: Any, options: Any) -> Any:
        seen.append(args)
        return {"queue": f"q{args[0]}"} if args else None

    app.conf.task_routes = [by_first_arg, {"prod.*": "fallback"}]
    queues = [app.producer.build("prod.x", args, {}, {})[1] for args in [(1,), (2,), ()]]
    assert queues == ["q1", "q2", "fallback"] and seen == [(1,), (2,), ()]


def test_new_ids_are_random_uuid4_strings() -> None:
    ids = {new_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for task_id in list(ids)[:1000]:
        parsed = uuid.UUID(task_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, task_id)


def test_delay_many_runs_in_place_when_eager() -> None:
    app = App("eager", broker="memory://", backend="memory://", task_always_eager=True)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert [r.get() for r in add.delay_many([(1, 2), [3, 4]])] == [3, 7]


@pytest.mark.parametrize(
    "options",
    [
        {"countdown": 1e300},
        {"countdown": float("nan")},
        {"countdown": float("inf")},
        {"countdown": 10**400},
        {"expires": float("nan")},
        {"expires": 1e300},
        {"countdown": "5"},
    ],
)
def test_unusable_countdowns_and_expiries_are_clear_errors(options: dict[str, Any]) -> None:
    """Issue 12, item 8: 1e300 raised a raw OverflowError and NaN ran the task at once."""
    app = App("t", broker="memory://")
    with pytest.raises(ConfigurationError, match="(countdown|expires)"):
        app.producer.build("t.x", (), {}, dict(options))
