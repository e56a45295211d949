"""The worker's parts on their own, on a clock the test drives (no sleeps)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from taskq.broker.base import Delivery, Envelope
from taskq.message import TaskMessage
from taskq.testing import test_app
from taskq.worker.holding import Holding
from taskq.worker.policy import Policies
from taskq.worker.request import Request
from taskq.worker.timing import Timing
from taskq.worker.window import Window


class Clock:
    """A clock that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def request(name: str, task_id: str, eta: float | None = None) -> Request:
    when = datetime.fromtimestamp(eta, timezone.utc) if eta is not None else None
    message = TaskMessage(id=task_id, task=name, eta=when)
    delivery = Delivery(Envelope(b"[]", "application/json"), "q", task_id)
    broker: Any = None  # these parts never settle a request
    return Request(delivery, message, broker, "test@host")


def test_a_rate_limited_request_waits_for_its_token_and_others_do_not() -> None:
    app = test_app()
    app.task(name="t.limited", rate_limit="2/s")(lambda: None)
    clock = Clock()
    holding = Holding(Policies(app.tasks, app.conf), clock)
    first, second = request("t.limited", "1"), request("t.limited", "2")
    assert holding.admit(first)  # the first token is there
    assert not holding.admit(second)  # parked: the next token is 0.5 s away
    assert holding.admit(request("t.other", "3"))  # other tasks are not held up
    assert holding.parked == 1 and holding.wait_at_most(5.0) == 0.5
    clock.advance(0.49)
    assert holding.release() == []
    clock.advance(0.01)
    assert holding.release() == [second]
    assert not holding


def test_a_request_held_for_its_eta_is_released_then_and_not_before() -> None:
    app = test_app()
    clock = Clock()
    holding = Holding(Policies(app.tasks, app.conf), clock)
    early = request("t.any", "1", eta=clock.now + 10)
    holding.hold(early, clock.now + 10)
    assert holding.held == 1 and holding.wait_at_most(60.0) == 10.0
    clock.advance(9.9)
    assert holding.release() == []
    clock.advance(0.1)
    assert holding.release() == [early]
    holding.hold(request("t.any", "2"), clock.now + 1)
    assert [r.id for r in holding.take_all()] == ["2"] and not holding


def test_the_window_waits_for_half_its_slots_under_a_backlog() -> None:
    clock = Clock()
    window = Window(capacity=8, concurrency=2, batching=True, timing=Timing(), clock=clock)
    assert window.free(parked=0) == 8
    for _ in range(8):
        window.started()
    window.fetched(got=8, asked=8)  # a full fetch: the queues have a backlog
    for _ in range(3):
        window.settled(parked=0)
    assert window.free(parked=0) == 0  # 3 of 8 free: wait for half the window
    window.settled(parked=0)
    assert window.free(parked=0) == 4


def test_the_window_grows_with_the_settle_rate_of_short_tasks() -> None:
    clock = Clock()
    timing = Timing(batch_span=0.02, batch_max=64)
    window = Window(capacity=8, concurrency=2, batching=True, timing=timing, clock=clock)
    for _ in range(1000):  # 1,000 settled in the next second: 20 per batch span
        window.started()
        window.settled(parked=0)
    clock.advance(1.0)
    window.fetched(got=8, asked=8)
    assert window.size == 20 and window.read_ahead
    window.fetched(got=1, asked=20)  # the backlog is gone: back to the prefetch window
    clock.advance(1.0)
    window.resize()
    assert window.size == 8 and not window.read_ahead


def test_a_prefetch_window_above_the_batch_cap_is_never_cut_to_it() -> None:
    """-c 1000 with the multiplier 4 keeps 4,000 leased, whatever the settle rate:
    the batch cap only limits growth past the prefetch window."""
    clock = Clock()
    timing = Timing(batch_span=0.02, batch_max=64)
    window = Window(capacity=4000, concurrency=1000, batching=True, timing=timing, clock=clock)
    for _ in range(5000):
        window.started()
        window.settled(parked=0)
    clock.advance(1.0)
    window.fetched(got=4000, asked=4000)
    assert window.size == 4000 and window.free(parked=0) == 4000
    clock.advance(1.0)
    window.fetched(got=10, asked=4000)
    assert window.size == 4000


# -- what remote control changes (taskq.worker.remote) ------------------------------


def test_a_rate_limit_set_by_remote_control_applies_to_the_next_request() -> None:
    app = test_app()
    app.task(name="t.limited", rate_limit="2/s")(lambda: None)
    clock = Clock()
    policies = Policies(app.tasks, app.conf)
    holding = Holding(policies, clock)
    assert holding.admit(request("t.limited", "1"))
    policies.set_rate_limit("t.limited", None)  # remote control: no limit
    assert holding.admit(request("t.limited", "2"))
    policies.set_rate_limit("t.limited", "1/m")
    clock.advance(0.5)  # the token the old rate promised
    assert holding.admit(request("t.limited", "3"))
    waiting = request("t.limited", "4")
    assert not holding.admit(waiting) and holding.wait_at_most(120.0) == 60.0
    assert holding.parked_requests() == [waiting] and holding.held_requests() == []


def test_time_limits_set_by_remote_control_apply_to_messages_received_after() -> None:
    app = test_app()
    app.task(name="t.limited", time_limit=10)(lambda: None)
    policies = Policies(app.tasks, app.conf)
    message = TaskMessage(id="1", task="t.limited")
    assert policies["t.limited"].limits_for(message) == (None, 10.0)
    policies.set_time_limits("t.limited", 2.0, 5.0)
    assert policies["t.limited"].limits_for(message) == (2.0, 5.0)
    assert policies["t.limited"].acks_late == policies["t.other"].acks_late  # the rest kept


def test_the_window_follows_the_pool_when_it_grows_or_shrinks() -> None:
    clock = Clock()
    window = Window(capacity=8, concurrency=2, batching=True, timing=Timing(), clock=clock)
    window.set_concurrency(5)  # the same multiplier of 4
    assert (window.concurrency, window.capacity, window.free(parked=0)) == (5, 20, 20)
    window.set_concurrency(1)
    assert (window.capacity, window.free(parked=0)) == (4, 4)
