"""Canvas end to end: chains, groups, chords, map/starmap/chunks, link/link_error,
on a real worker (threads pool, -c 8) with Redis as broker, and results in Redis
or in PostgreSQL.

"Exactly once" is checked after a burst worker (``run_until_empty``) returned:
it stops only when the queues are empty and nothing runs, so every callback,
errback and chord body that was going to run has run.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from functools import reduce
from operator import or_
from pathlib import Path
from typing import Any

import pytest
import redis

from taskq import App, GroupResult, Signature, chain, chord, group, signature
from taskq.canvas import chunks
from taskq.errors import BackendError, ChordError, ConfigurationError
from taskq.testing import run_until_empty, running_worker, test_app
from taskq.worker.options import WorkerOptions
from taskq.worker.worker import Worker
from tests import servers, sql

COMBOS = ["redis", "redis+postgresql"]


def delete_prefixed(prefix: str) -> None:
    """Delete this test's own Redis keys (never FLUSHDB: the server is shared)."""
    client = redis.Redis.from_url(servers.REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=COMBOS)
def app(request: pytest.FixtureRequest, unique: str, tmp_path: Path) -> Iterator[App]:
    servers.require("redis")
    prefix, table = f"taskq-test-{unique}:", f"taskq_test_{unique}"
    if request.param == "redis":
        backend, options = servers.REDIS_URL, {"key_prefix": prefix}
    else:
        backend, options = sql.backend_url("postgresql", tmp_path), {"table_name": table}
    app = App(
        "canvas",
        broker=servers.REDIS_URL,
        backend=backend,
        broker_transport_options={"key_prefix": prefix},
        result_backend_transport_options=options,
        task_default_queue=f"q-{unique}",
        worker_lease_timeout=10.0,
    )
    yield app
    app.close()
    delete_prefixed(prefix)
    if request.param != "redis":
        sql.drop_table(backend, table)


class Tasks:
    """The tasks the canvas tests use, registered on one app, with in-process ledgers
    (the worker runs in a thread of this process)."""

    def __init__(self, app: App) -> None:
        self.bodies: list[Any] = []
        self.errbacks: list[str] = []
        self.seen: list[Any] = []
        bodies, errbacks, seen = self.bodies, self.errbacks, self.seen

        @app.task(name="canvas.add")
        def add(x: int, y: int) -> int:
            return x + y

        @app.task(name="canvas.double")
        def double(x: int) -> int:
            return 2 * x

        @app.task(name="canvas.tsum")
        def tsum(values: list[int]) -> int:
            return sum(values)

        @app.task(name="canvas.collect")
        def collect(values: list[Any]) -> list[Any]:
            bodies.append(values)
            return values

        @app.task(name="canvas.fail")
        def fail(*args: Any) -> None:
            raise ValueError(f"boom {args}")

        @app.task(name="canvas.on_error")
        def on_error(task_id: str) -> None:
            errbacks.append(task_id)

        @app.task(name="canvas.record")
        def record(value: Any) -> None:
            seen.append(value)

        @app.task(name="canvas.where", bind=True)
        def where(self: Any) -> list[Any]:
            return [self.request.group, self.request.group_index]

        self.add, self.double, self.tsum, self.collect = add, double, tsum, collect
        self.fail, self.on_error, self.record, self.where = fail, on_error, record, where


def burst(app: App, queues: list[str] | None = None) -> None:
    run_until_empty(app, queues=queues, pool="threads", concurrency=8)


# -- chains ------------------------------------------------------------------------------


def test_chain_of_ten_feeds_each_result_forward(app: App) -> None:
    t = Tasks(app)
    steps = [t.add.s(0, 1), *(t.add.s(1) for _ in range(9))]
    result = chain(*steps).apply_async()
    with running_worker(app, concurrency=8):
        assert result.get(timeout=20) == 10
        # Ids were assigned up front: .parent walks back to the first task.
        values, node = [], result
        while node is not None:
            values.append(node.get(timeout=5))
            node = node.parent
    assert values == list(range(10, 0, -1))


def test_pipe_operator_and_immutable_signatures(app: App) -> None:
    t = Tasks(app)
    workflow = reduce(or_, [t.add.s(1, 1), t.add.s(10), t.add.si(5, 5), t.double.s()])
    assert isinstance(workflow, chain) and len(workflow.tasks) == 4
    with running_worker(app, concurrency=8):
        assert workflow.delay().get(timeout=20) == 20  # si ignores 12: (5 + 5) * 2


def test_a_failing_step_fails_the_rest_of_the_chain(app: App) -> None:
    t = Tasks(app)
    result = chain(t.add.s(1, 1), t.fail.s(), t.add.s(1)).apply_async(link_error=t.on_error.s())
    burst(app)
    with pytest.raises(ValueError, match=r"boom \(2,\)"):
        result.get(timeout=5)
    assert t.errbacks == [result.parent.id]  # only the task that failed reports


# -- groups ------------------------------------------------------------------------------


def test_group_of_a_thousand_returns_results_in_order(app: App) -> None:
    t = Tasks(app)
    result = group(t.add.s(i, i) for i in range(1000)).apply_async()
    assert isinstance(result, GroupResult) and len(result.results) == 1000
    with running_worker(app, concurrency=8):
        assert result.get(timeout=40) == [2 * i for i in range(1000)]
    assert result.ready() and result.successful() and not result.failed()
    assert result.completed_count() == 1000

    result.save()
    restored = GroupResult.restore(result.id, app=app)
    assert restored is not None and restored.id == result.id
    assert [r.id for r in restored.results] == [r.id for r in result.results]
    assert restored.get(timeout=5)[:3] == [0, 2, 4]
    assert GroupResult.restore("no-such-group", app=app) is None


def test_group_members_carry_group_id_and_index(app: App) -> None:
    t = Tasks(app)
    result = group(t.where.s() for _ in range(3)).apply_async()
    burst(app)
    assert result.get(timeout=5) == [[result.id, 0], [result.id, 1], [result.id, 2]]


def test_group_failure_and_revoke(app: App) -> None:
    t = Tasks(app)
    failing = group(t.add.s(1, 1), t.fail.s()).apply_async()
    burst(app)
    assert failing.ready() and failing.failed() and not failing.successful()
    assert failing.completed_count() == 1
    with pytest.raises(ValueError, match="boom"):
        failing.get(timeout=5)
    assert failing.get(timeout=5, propagate=False)[0] == 2

    revoked = group(t.add.s(2, 2), t.add.s(3, 3)).apply_async()
    revoked.revoke()
    burst(app)
    assert [r.state for r in revoked.results] == ["REVOKED", "REVOKED"]


# -- chords ------------------------------------------------------------------------------


def test_chord_of_a_thousand_runs_the_body_once(app: App) -> None:
    t = Tasks(app)
    result = chord((t.add.s(i, i) for i in range(1000)), t.collect.s()).apply_async()
    assert isinstance(result.parent, GroupResult) and len(result.parent.results) == 1000
    burst(app)
    assert result.get(timeout=5) == [2 * i for i in range(1000)]
    assert t.bodies == [[2 * i for i in range(1000)]]


def test_failing_header_task_fails_the_chord_once(app: App) -> None:
    t = Tasks(app)
    body = t.collect.s()
    body.link_error(t.on_error.s())
    header = [t.add.s(1, 1), t.fail.s(1), t.add.s(2, 2), t.fail.s(2)]
    result = chord(header, body).apply_async()
    burst(app)
    with pytest.raises(ChordError) as info:
        result.get(timeout=5)
    failed = [r.id for r in result.parent.results if r.failed()]
    assert len(failed) == 2
    message = str(info.value)
    assert any(f"Dependency {task_id} raised ValueError('boom" in message for task_id in failed)
    assert t.bodies == []
    assert t.errbacks == [result.id]  # once, though two header tasks failed


def test_revoked_header_task_fails_the_chord_instead_of_hanging(app: App) -> None:
    t = Tasks(app)
    result = chord([t.add.s(1, 1), t.add.s(2, 2)], t.collect.s()).apply_async()
    result.parent.results[1].revoke()
    burst(app)
    with pytest.raises(ChordError, match=result.parent.results[1].id):
        result.get(timeout=5)
    assert t.bodies == []


def test_failure_propagates_through_nested_chords_and_chains(app: App) -> None:
    t = Tasks(app)
    outer_body = t.collect.s()
    outer_body.link_error(t.on_error.s())
    inner = chord([t.add.s(1, 1), t.fail.s()], t.collect.s())
    result = chord([inner, t.add.s(2, 2)], outer_body).apply_async()
    after_chain = chain(t.add.s(1, 1), t.fail.s(), t.add.s(1), t.add.s(1)).apply_async()
    burst(app)
    with pytest.raises(ChordError, match="raised ChordError"):
        result.get(timeout=5)
    assert t.bodies == [] and t.errbacks == [result.id]
    with pytest.raises(ValueError):
        after_chain.get(timeout=5)
    assert after_chain.parent.failed()


def test_a_backend_error_while_counting_gives_the_message_back(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = Tasks(app)
    backend = app.require_backend()
    # Redis counts in Celery's chord keys, the other backends with add_member.
    counter: Any = backend.chords if backend.chords is not None else backend
    name = "add_part" if backend.chords is not None else "add_member"
    count, failures = getattr(counter, name), []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(args)
            raise BackendError("the result backend is briefly away")
        return count(*args, **kwargs)

    monkeypatch.setattr(counter, name, flaky)
    result = chord([t.add.s(i, i) for i in range(5)], t.collect.s()).apply_async()
    burst(app)  # the task whose count failed ran again and counted
    assert failures and result.get(timeout=5) == [0, 2, 4, 6, 8]
    assert t.bodies == [[0, 2, 4, 6, 8]]


def test_nested_chord_in_chain_in_group(app: App) -> None:
    t = Tasks(app)
    inner = [
        chain(t.add.s(i, i), chord([t.add.s(j) for j in range(3)], t.tsum.s()), t.add.s(100))
        for i in range(4)
    ]
    nested = group(inner).apply_async()
    # A group followed by a step is a chord; a chord in a chain continues after its body.
    upgraded = chain(t.add.s(1, 1), group(t.add.s(1), t.add.s(2)), t.tsum.s()).apply_async()
    continued = chain(chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s()), t.double.s()).delay()
    in_header = chord(
        [group(t.add.s(1, 1), t.add.s(2, 2)), chain(t.add.s(0, 3), t.double.s())], t.collect.s()
    ).delay()
    with running_worker(app, concurrency=8):
        assert nested.get(timeout=20) == [6 * i + 103 for i in range(4)]
        assert upgraded.get(timeout=20) == 7
        assert continued.get(timeout=20) == 12
        assert in_header.get(timeout=20) == [2, 4, 6]


def test_worker_stopped_cold_mid_chord_still_completes_it_once(app: App, unique: str) -> None:
    """Header tasks run on a first worker that is stopped cold: their messages go back
    to the queue and run again on a second worker, while the first worker's threads
    still finish theirs. Duplicate runs must not count twice: the last header task
    waits in a queue of its own, and until it ran, the chord must not fire."""
    t = Tasks(app)
    started, release = threading.Semaphore(0), threading.Event()
    runs: list[int] = []

    @app.task(name="canvas.held", bind=True)
    def held(self: Any, i: int) -> int:
        runs.append(i)
        if self.request.hostname == "first@canvas":
            started.release()
            assert release.wait(20), "the test never released the first worker"
        return i

    late = f"late-{unique}"
    header = [held.s(i) for i in range(19)] + [held.s(19).set(queue=late)]
    first = Worker(app, WorkerOptions(pool="threads", concurrency=4, hostname="first@canvas"))
    thread = threading.Thread(target=first.run, daemon=True)
    thread.start()
    result = chord(header, t.collect.s()).apply_async()
    for _ in range(4):
        assert started.acquire(timeout=10), "the first worker never started the header"
    first.stop(cold=True)
    thread.join(15)
    assert not thread.is_alive()
    release.set()  # the stopped worker's threads now finish and count their tasks
    assert first.pool.join(10)

    burst(app)  # runs the 4 given-back tasks again, and the other 15
    assert len(runs) == 4 + 19  # 23 runs of 19 distinct tasks: a plain counter says 23
    assert t.bodies == [] and not result.ready()
    burst(app, queues=[late, app.conf.task_default_queue])  # the last task, then the body
    assert result.get(timeout=5) == list(range(20))
    assert t.bodies == [list(range(20))]


# -- link, link_error, map, starmap, chunks ---------------------------------------------


def test_link_and_link_error_take_lists_and_options(app: App, unique: str) -> None:
    t = Tasks(app)
    other = f"other-{unique}"
    t.add.apply_async((2, 3), link=[t.record.s(), t.record.s().set(queue=other)])
    t.fail.apply_async(link_error=t.record.si("errback").set(queue=other))
    failed = t.fail.apply_async((1,), link_error=[t.on_error.s(), t.on_error.s()])
    sig = t.add.s(1, 1).set(link=t.record.s())
    sig.link(t.double.s())
    linked = sig.apply_async()
    burst(app, queues=[app.conf.task_default_queue, other])
    assert sorted(t.seen, key=str) == [2, 5, 5, "errback"]
    assert t.errbacks == [failed.id, failed.id]
    assert linked.get(timeout=5) == 2


def test_map_starmap_and_chunks(app: App) -> None:
    t = Tasks(app)
    mapped = t.double.map([1, 2, 3]).apply_async()
    starred = t.add.starmap([(1, 2), (3, 4)]).delay()
    chunked = t.add.chunks(zip(range(10), range(10), strict=True), 3)
    as_group = chunked.group()
    assert isinstance(as_group, group) and len(as_group.tasks) == 4
    assert {s.task for s in as_group.tasks} == {"taskq.starmap"}
    chunk_result = chunked.apply_async()
    burst(app)
    assert mapped.get(timeout=5) == [2, 4, 6]
    assert starred.get(timeout=5) == [3, 7]
    assert chunk_result.get(timeout=5) == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]


# -- signatures as data (no worker) ------------------------------------------------------


def test_signatures_round_trip_through_json() -> None:
    app = test_app()
    add = app.task(name="t.add")(lambda x, y: x + y)
    workflow = chain(
        add.s(1, 1),
        group(add.s(1), add.s(2).set(queue="q")),
        chord([add.s(3)], add.si(0, 0)),
        add.chunks([(1, 2)], 1),
    )
    data = json.loads(json.dumps(workflow))
    back = Signature.from_dict(data, app)
    assert isinstance(back, chain) and back == workflow
    assert [type(s) for s in back.tasks] == [Signature, group, chord, chunks]
    assert back.tasks[1].tasks[1].options == {"queue": "q"}
    assert back.tasks[2].app is app
    assert signature(data, app=app) == workflow
    assert signature("t.add", (1,), {"y": 2}, {"queue": "q"}).options == {"queue": "q"}
    app.close()


def test_chord_messages_stay_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each header message carries the body and the size once, never the header."""
    app = test_app()
    add = app.task(name="t.add")(lambda x, y: x + y)
    sizes: list[int] = []
    publish = app.broker.publish

    def measure(envelope: Any, *args: Any, **kwargs: Any) -> None:
        sizes.append(len(envelope.body))
        publish(envelope, *args, **kwargs)

    monkeypatch.setattr(app.broker, "publish", measure)
    chord([add.s(i, i) for i in range(10)], add.s(1)).apply_async()
    small = max(sizes)
    sizes.clear()
    chord([add.s(i, i) for i in range(1000)], add.s(1)).apply_async()
    assert len(sizes) == 1000 and max(sizes) <= small + 8  # wider numbers, same shape
    app.close()


def test_misuse_is_explained() -> None:
    app = test_app()
    add = app.task(name="t.add")(lambda x, y: x + y)
    with pytest.raises(ConfigurationError, match="use chord"):
        group(add.s(1, 1)).apply_async(link=add.s(1))
    with pytest.raises(ConfigurationError, match="chunk size"):
        add.chunks([(1, 2)], 0)
    with pytest.raises(ConfigurationError, match="at least one task"):
        chain(app=app).apply_async()
    with pytest.raises(ConfigurationError, match="not bound"):
        chain(signature("t.add", (1, 1))).apply_async()
    app.conf.task_always_eager = True
    with pytest.raises(ConfigurationError, match="run_until_empty"):
        group(add.s(1, 1)).delay()
    app.close()
