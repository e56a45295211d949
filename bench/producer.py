"""The producer side of one framework, run as its own process by the bench.

``python -m bench.producer FRAMEWORK`` reads one JSON command a line on stdin and
answers each with one JSON line on stdout. A process of its own per phase keeps
each framework's imports, connection pools and result listeners out of the
others' figures, and lets the results flag (read at import) differ per phase.

Commands (``task`` is ``noop``, ``latency`` or ``sleepy``):
    {"op": "single", "n": N, "task": T}     N sends, one ``delay()`` at a time
    {"op": "fast", "n": N, "task": T, "keep": bool}
                                            N sends with the fastest producer
    {"op": "bulk", "n": N}                  N sends through the bulk API, if any
    {"op": "get_all", "timeout": S}         ``get()`` each handle kept by ``fast``
    {"op": "latency", "trials": N, "gap": S, "budget": S, "timeout": S}
    {"op": "delayed", "n": N, "eta": TS, "task": T, "backlog": bool}
    {"op": "quit"}
"""

from __future__ import annotations

import json
import random
import sys
import time
from datetime import datetime, timezone
from typing import Any


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


class TaskqProducer:
    single_api = "noop.delay()"
    bulk_api = "noop.delay_many([() ...])"
    fast_api = "noop.delay_many([() ...])"

    def __init__(self) -> None:
        from bench.apps import taskq_app

        self.module = taskq_app
        self.app = taskq_app.app

    def send(self, task: str, args: tuple[Any, ...] = ()) -> Any:
        return getattr(self.module, task).apply_async(args)

    def settle(self) -> None:
        """On RabbitMQ delay() returns before its confirm: the timed phases end when
        every message is confirmed (stored), so their rates are confirmed ones."""
        self.app.producer.flush()

    def fast(self, task: str, n: int) -> list[Any]:
        # One argument tuple a task; delay_many publishes in chunks of 1,000 a pipeline.
        return getattr(self.module, task).delay_many([()] * n)

    def bulk(self, n: int) -> None:
        self.fast("noop", n)

    def get(self, handle: Any, timeout: float) -> None:
        handle.get(timeout=timeout)

    def send_at(self, task: str, args: tuple[Any, ...], eta: float) -> None:
        getattr(self.module, task).apply_async(args, eta=_utc(eta))

    def backlog(self, n: int, eta: float) -> str:
        """Park ``n`` copies of one message in the broker's delayed store (never run).

        taskq has no bulk publish for delayed messages, so this pipelines ZADDs in the
        Redis broker's own member format (its private ``_prepare``/``_pack``), falling
        back to one ``broker.publish(eta=...)`` a message if those internals moved.
        """
        import uuid

        from taskq import message
        from taskq.broker import redis as redis_broker

        fn = self.module.noop
        msg, queue, priority, _ = self.app.producer.build(fn.name, (), {}, {"eta": _utc(eta)})
        envelope = message.encode(msg, self.app.conf.task_serializer, priority)
        broker: Any = self.app.broker
        try:
            key, payload = redis_broker._prepare(envelope, queue, priority)
            packed, zset = redis_broker._pack(key, payload), broker._keys.delayed
        except AttributeError:
            for _ in range(n):
                broker.publish(envelope, queue, priority=priority, eta=eta)
            return "broker.publish(eta=...) per message"
        for start in range(0, n, 10_000):
            count = min(10_000, n - start)
            members = {uuid.uuid4().hex.encode() + packed: eta for _ in range(count)}
            broker._client.zadd(zset, members)
        return "ZADD 10,000 members a call, in the Redis broker's delayed-store format"


class CeleryProducer:
    single_api = "noop.delay()"
    bulk_api = "group(noop.s() ...).apply_async()"
    fast_api = "noop.apply_async(producer=p) on one acquired producer"

    def __init__(self) -> None:
        from bench.apps import celery_app

        self.module = celery_app
        self.app = celery_app.app

    def send(self, task: str, args: tuple[Any, ...] = ()) -> Any:
        return getattr(self.module, task).apply_async(args)

    def fast(self, task: str, n: int) -> list[Any]:
        fn = getattr(self.module, task)
        with self.app.producer_or_acquire() as pub:
            return [fn.apply_async((), producer=pub) for _ in range(n)]

    def bulk(self, n: int) -> None:
        from celery import group

        group(self.module.noop.s() for _ in range(n)).apply_async()

    def get(self, handle: Any, timeout: float) -> None:
        handle.get(timeout=timeout)

    def send_at(self, task: str, args: tuple[Any, ...], eta: float) -> None:
        getattr(self.module, task).apply_async(args, eta=_utc(eta))

    def backlog(self, n: int, eta: float) -> str:
        fn = self.module.noop
        with self.app.producer_or_acquire() as pub:
            for _ in range(n):
                fn.apply_async((), eta=_utc(eta), producer=pub)
        return "noop.apply_async(eta=..., producer=p)"


class DramatiqProducer:
    single_api = "noop.send()"
    bulk_api = "dramatiq.group([noop.message() ...]).run()"
    fast_api = "noop.send() (no faster producer API)"

    def __init__(self) -> None:
        from bench.apps import dramatiq_app

        self.module = dramatiq_app

    def send(self, task: str, args: tuple[Any, ...] = ()) -> Any:
        return getattr(self.module, task).send(*args)

    def fast(self, task: str, n: int) -> list[Any]:
        fn = getattr(self.module, task)
        return [fn.send() for _ in range(n)]

    def bulk(self, n: int) -> None:
        import dramatiq

        dramatiq.group([self.module.noop.message() for _ in range(n)]).run()

    def get(self, handle: Any, timeout: float) -> None:
        handle.get_result(block=True, timeout=int(timeout * 1000))

    def send_at(self, task: str, args: tuple[Any, ...], eta: float) -> None:
        delay = max(0, int((eta - time.time()) * 1000))
        getattr(self.module, task).send_with_options(args=args, delay=delay)

    def backlog(self, n: int, eta: float) -> str:
        fn = self.module.noop
        delay = int((eta - time.time()) * 1000)
        for _ in range(n):
            fn.send_with_options(delay=delay)
        return "noop.send_with_options(delay=...)"


class HueyProducer:
    single_api = "noop()"
    bulk_api = "noop.map([() ...])"
    fast_api = "noop() (no faster producer API)"

    def __init__(self) -> None:
        from bench.apps import huey_app

        self.module = huey_app

    def send(self, task: str, args: tuple[Any, ...] = ()) -> Any:
        return getattr(self.module, task)(*args)

    def fast(self, task: str, n: int) -> list[Any]:
        fn = getattr(self.module, task)
        return [fn() for _ in range(n)]

    def bulk(self, n: int) -> None:
        self.module.noop.map([() for _ in range(n)])

    def get(self, handle: Any, timeout: float) -> None:
        handle.get(blocking=True, timeout=timeout)

    def send_at(self, task: str, args: tuple[Any, ...], eta: float) -> None:
        getattr(self.module, task).schedule(args=args, eta=_utc(eta).replace(tzinfo=None))

    def backlog(self, n: int, eta: float) -> str:
        fn = self.module.noop
        when = _utc(eta).replace(tzinfo=None)  # RedisHuey(utc=True) takes naive UTC
        for _ in range(n):
            fn.schedule(eta=when)
        return "noop.schedule(eta=...)"


PRODUCERS = {
    "taskq": TaskqProducer,
    "celery": CeleryProducer,
    "dramatiq": DramatiqProducer,
    "huey": HueyProducer,
}


class Session:
    """Runs the commands against one framework's producer, keeping handles between them."""

    def __init__(self, framework: str) -> None:
        self.producer = PRODUCERS[framework]()
        self.kept: list[Any] = []

    def single(self, n: int, task: str = "noop") -> dict[str, Any]:
        started = time.perf_counter()
        for _ in range(n):
            self.producer.send(task)
        self._settle()
        return {"seconds": time.perf_counter() - started, "api": self.producer.single_api}

    def _settle(self) -> None:
        settle = getattr(self.producer, "settle", None)
        if settle is not None:
            settle()

    def fast(self, n: int, task: str = "noop", keep: bool = False) -> dict[str, Any]:
        started = time.perf_counter()
        handles = self.producer.fast(task, n)
        self._settle()
        seconds = time.perf_counter() - started
        self.kept = handles if keep else []
        return {"seconds": seconds, "api": self.producer.fast_api}

    def bulk(self, n: int) -> dict[str, Any]:
        started = time.perf_counter()
        self.producer.bulk(n)
        self._settle()
        return {"seconds": time.perf_counter() - started, "api": self.producer.bulk_api}

    def get_all(self, timeout: float) -> dict[str, Any]:
        """``get()`` each kept handle in order, all within ``timeout`` seconds."""
        errors = 0
        deadline = time.monotonic() + timeout
        for handle in self.kept:
            left = deadline - time.monotonic()
            if left <= 0:
                errors += 1
                continue
            try:
                self.producer.get(handle, min(left, 10.0))
            except Exception:  # a timeout or a lost result counts; the bench goes on
                errors += 1
        return {"finished_at": time.time(), "errors": errors, "count": len(self.kept)}

    def latency(self, trials: int, gap: float, budget: float, timeout: float) -> dict[str, Any]:
        """Idle round trips: send ``latency(time.time())``, ``get()`` it, pause ``gap``."""
        rng = random.Random(7)
        results: list[float] = []
        errors = 0
        deadline = time.monotonic() + budget
        for _ in range(trials):
            if time.monotonic() > deadline:
                break
            time.sleep(gap * rng.uniform(0.5, 1.5))  # jitter: no lock-step with poll periods
            sent = time.time()
            handle = self.producer.send("latency", (sent,))
            try:
                self.producer.get(handle, timeout)
            except Exception:
                errors += 1
                continue
            results.append(time.time() - sent)
        return {"get_seconds": results, "errors": errors}

    def delayed(self, n: int, eta: float, task: str = "noop", backlog: bool = False) -> dict:
        started = time.perf_counter()
        if backlog:
            api = self.producer.backlog(n, eta)
        else:
            api = "eta= on the task's send API"
            args = (eta,) if task == "latency" else ()
            for _ in range(n):
                self.producer.send_at(task, args, eta)
        return {"seconds": time.perf_counter() - started, "api": api}


def main() -> None:
    session = Session(sys.argv[1])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        if op == "quit":
            break
        try:
            reply = getattr(session, op)(**command)
        except Exception as exc:  # reported to the bench, which shows it and goes on
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
