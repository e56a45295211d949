"""A seeded generator of hostile task messages, for the fuzz test (issue 12).

Each ``Case`` is one message as any client with write access to the broker could
publish it, and what a worker must do with it: run it (a good ``faults.work``
task, maybe with harmless oddities) or dead-letter it exactly once. Mutations
come from what the issue found (a ``retries`` of ``"abc"``, a ``timelimit`` of
``5``, JSON nested 1,024 deep, a ``x-taskq-worker-lost`` of ``"zz"``, ...) and
from the layers around them: the body, its embed, the content type, and on Redis
the kombu envelope itself. The same seed gives the same messages.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

from taskq.message import TaskMessage, encode

#: The worker-lost count header, spelled out: the test does not take it from taskq.
LOST_HEADER = "x-taskq-worker-lost"

DEAD, RUN = "dead", "run"

#: Values no header field accepts (each header below gets one of them).
HOSTILE = [
    "abc", "", "\x00", "x" * 5000, [1], ["x", "y"], {}, {"a": 1}, -1, 2**70, -(2**70),
    True, 1.5, float("inf"), float("-inf"), float("nan"),
]  # fmt: skip
#: Header -> values that are wrong only for it (on top of HOSTILE's).
OWN: dict[str, list[Any]] = {
    "retries": ["abc", [1], float("inf"), -1, 2**31, True, 1.5],
    "timelimit": [5, {}, ["x", "y"], [1e300, None], [None, -1], [1, 2, 3], "5"],
    "eta": ["tomorrow", 5, "2020-13-45", ["2030"], "9999-99-99T00:00:00"],
    "expires": ["soon", 5, [1]],
    "group_index": ["1", -3, 1.0, [0]],
    "ignore_result": ["yes", 1, [True]],
    "task": ["", 5, ["faults.work"], None],
    "id": ["", 5, ["x"], None],
    "root_id": [5, ["r"], {}],
    "parent_id": [5, ["p"]],
    "group": [5, {}],
    "origin": [5, []],
    "shadow": [5, {}],
    LOST_HEADER: ["zz", -1, 1.5, [1], 99],
}


def _amqp_sendable(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return not isinstance(value, int) or abs(value) < 2**63


def _accepted(name: str, value: Any) -> bool:
    """Whether ``value`` is a valid ``name`` header after all (stated here, not taken
    from taskq's own checks, so the test does not trust what it tests)."""
    if name in ("root_id", "parent_id", "group", "origin", "shadow"):
        return isinstance(value, str)
    if name == "id":
        return isinstance(value, str) and value != ""
    if name == "task":
        return value == "faults.work"
    if name in ("retries", "group_index"):
        return type(value) is int and 0 <= value < 2**31
    if name == LOST_HEADER:
        return type(value) is int and 0 <= value <= 3  # + 1 delivery: within the limit of 5
    if name == "ignore_result":
        return type(value) is bool
    if name == "timelimit":
        return value == [] or (
            isinstance(value, list)
            and len(value) == 2
            and all(v is None or (type(v) in (int, float) and 0 <= v <= 1e8) for v in value)
        )
    return False  # eta, expires: HOSTILE holds no ISO 8601 string


def deep_json(depth: int) -> bytes:
    """JSON text of lists nested ``depth`` deep (2 bytes a level)."""
    return b"[" * depth + b"]" * depth


def deep(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


@dataclasses.dataclass
class Case:
    """One message: ``id`` is unique per case (the ``x-fuzz`` header, and the task id
    of those that have one); ``expect`` is RUN or DEAD."""

    id: str
    kind: str
    expect: str
    headers: dict[str, Any]
    body: bytes
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Redis only: the whole kombu envelope, when the mutation is at that level.
    raw: bytes | None = None


def good(case_id: str) -> Case:
    """A ``faults.work`` task the worker must run."""
    env = encode(TaskMessage(id=case_id, task="faults.work", kwargs={"seconds": 0.0}))
    return Case(case_id, "good", RUN, {**env.headers, "x-fuzz": case_id}, env.body,
                properties=dict(env.properties))  # fmt: skip


class Fuzzer:
    """Makes cases from ``seed``; ``redis`` adds envelope-level (kombu JSON) cases."""

    def __init__(self, seed: int, prefix: str, *, redis: bool) -> None:
        self.rng = random.Random(seed)
        self.prefix = prefix
        self.redis = redis
        # AMQP tables hold 64-bit integers only, and RabbitMQ closes the connection
        # (541 INTERNAL_ERROR) on a NaN or infinite double: no client can send those.
        self._hostile = HOSTILE if redis else [v for v in HOSTILE if _amqp_sendable(v)]
        self._n = 0
        self._mutations: list[Callable[[Case], Case]] = [
            self._hostile_header, self._own_bad_header, self._missing_header,
            self._unknown_task, self._deep_header, self._bad_body, self._deep_body,
            self._content_type, self._benign,
        ]  # fmt: skip
        if redis:
            self._mutations.append(self._bad_envelope)

    def cases(self, bad: int, good_every: int) -> Iterator[Case]:
        """``bad`` mutated cases (some turn out harmless and run), with a good task
        after every ``good_every`` of them."""
        for n in range(bad):
            yield self.rng.choice(self._mutations)(good(self._next_id()))
            if n % good_every == good_every - 1:
                yield good(self._next_id())

    def _next_id(self) -> str:
        self._n += 1
        return f"{self.prefix}-{self._n}"

    # -- mutations ---------------------------------------------------------------------

    def _hostile_header(self, case: Case) -> Case:
        name = self.rng.choice(sorted(OWN))
        value = self.rng.choice(self._hostile)
        if _accepted(name, value):  # that one happens to be fine there
            value = OWN[name][0]
        return self._set_header(case, "hostile-header", name, value)

    def _own_bad_header(self, case: Case) -> Case:
        name = self.rng.choice(sorted(OWN))
        value = self.rng.choice([v for v in OWN[name] if self.redis or _amqp_sendable(v)])
        return self._set_header(case, "bad-header", name, value)

    def _set_header(self, case: Case, kind: str, name: str, value: Any) -> Case:
        case.headers[name] = value
        case.kind = f"{kind}:{name}"
        case.expect = DEAD
        return case

    def _missing_header(self, case: Case) -> Case:
        name = self.rng.choice(["task", "id"])
        del case.headers[name]
        case.kind, case.expect = f"missing:{name}", DEAD
        return case

    def _unknown_task(self, case: Case) -> Case:
        name = "fuzz." + "".join(self.rng.choices("abcdefghij", k=8))
        return self._set_header(case, "unknown-task", "task", name)

    def _deep_header(self, case: Case) -> Case:
        # py-amqp encodes and decodes tables recursively: 150 levels, not 1,000.
        depth = self.rng.choice([150, 500] if self.redis else [150])
        return self._set_header(case, "deep-header", "x-deep", deep(depth))

    def _bad_body(self, case: Case) -> Case:
        bodies = [
            b"{not json", b"", b"[", b"[[], {}, {", b"null", b"5", b'"text"', b"{}",
            b'{"a": 1}', b'["notalist", {}, {}]', b"[[], [], {}]", b"[[], {}, 7]",
            b'[[], {}, {"callbacks": 5}]', b'[[], {}, {"chain": [1]}]',
            b'[[], {}, {"chord": "c"}]', b"[[], {}, {}, {}]", b"[[]]", b"\xff\xfe\x00",
            bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 64))),
        ]  # fmt: skip
        case.body = self.rng.choice(bodies)
        case.kind, case.expect = "bad-body", DEAD
        return case

    def _deep_body(self, case: Case) -> Case:
        nested = deep_json(self.rng.choice([101, 300, 1024]))
        case.body = self.rng.choice(
            [b"[" + nested + b", {}, {}]", b'[[], {"seconds": 0, "x": ' + nested + b"}, {}]"]
        )
        case.kind, case.expect = "deep-body", DEAD
        return case

    def _content_type(self, case: Case) -> Case:
        case.content_type, case.content_encoding = self.rng.choice(
            [
                ("application/x-python-serialize", "binary"),
                ("application/x-yaml", "utf-8"),
                ("text/plain", "utf-8"),
                ("application/x-taskq-sealed", "binary"),
                ("", "utf-8"),
            ]
        )
        case.kind, case.expect = f"content-type:{case.content_type}", DEAD
        return case

    def _benign(self, case: Case) -> Case:
        """Oddities a worker must tolerate and still run the task."""
        choice = self.rng.randrange(4)
        if choice == 0:
            case.headers["x-custom"] = {"nested": [1, 2, {"three": 3}]}
        elif choice == 1:
            case.headers["argsrepr"] = self.rng.choice([None, 5, "x" * 3000])
        elif choice == 2:
            for name in ("shadow", "group", "parent_id", "eta", "expires"):
                case.headers.pop(name, None)
        else:
            case.headers["retries"] = self.rng.randrange(0, 100)
        case.kind = f"benign:{choice}"
        return case

    def _bad_envelope(self, case: Case) -> Case:
        """Redis only: the kombu envelope around the message is what is broken."""
        body = base64.b64encode(case.body).decode()
        base = {
            "body": body, "content-encoding": "utf-8", "content-type": "application/json",
            "headers": {"x-fuzz": case.id, "task": "faults.work", "id": case.id},
            "properties": {"body_encoding": "base64", "delivery_tag": case.id},
        }  # fmt: skip
        variants: list[Any] = [
            b"{this is not json",
            json.dumps(["a", "list"]).encode(),
            json.dumps({**base, "properties": None}).encode(),
            json.dumps({**base, "body": 5}).encode(),
            json.dumps({**base, "body": "!!!not base64!!!"}).encode(),
            json.dumps({**base, "properties": {"body_encoding": "rot13"}}).encode(),
            json.dumps({**base, "content-type": None}).encode(),
            json.dumps({**base, "headers": "nope"}).encode(),
            b'{"body": ' + deep_json(1024) + b"}",
            b"\xff" * 20,
        ]
        raw = self.rng.choice(variants)
        case.raw = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
        case.kind, case.expect = "bad-envelope", DEAD
        return case
