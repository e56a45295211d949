"""HeldResults: results written in batches, each before the acks that follow it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, cast

from taskq.backends.memory import MemoryBackend
from taskq.errors import BackendError
from taskq.worker.request import Request
from taskq.worker.results import HeldResults
from tests.waiting import wait_until


class Recording(MemoryBackend):
    """A memory backend that logs each batch it writes into a shared log."""

    def __init__(self, log: list[tuple[str, Any]], fail: int = 0) -> None:
        super().__init__("memory://", options={})
        self.log = log
        self.fail = fail

    def set_ready_many(self, items: Sequence[tuple[str, bytes]], expires: float | None) -> None:
        if self.fail:
            self.fail -= 1
            raise BackendError("down")
        self.log.append(("write", [key for key, _ in items]))
        super().set_ready_many(items, expires)

    def recoverable(self, exc: BackendError) -> bool:
        return False


class Acked:
    """Stands in for a Request: records its ack in the shared log."""

    def __init__(self, name: str, log: list[tuple[str, Any]]) -> None:
        self.name, self.log = name, log

    def ack(self) -> None:
        self.log.append(("ack", self.name))


def request(name: str, log: list[tuple[str, Any]]) -> Request:
    return cast(Request, Acked(name, log))


def test_a_holding_thread_writes_the_batch_then_acks() -> None:
    log: list[tuple[str, Any]] = []
    held = HeldResults(Recording(log), delay=60)
    held.hold_here()
    for n in range(3):
        held.add(f"k{n}", b"{}")
        assert held.ack_after(request(f"r{n}", log))
    assert log == []  # held: nothing written, nothing acked
    held.flush()
    assert log == [("write", ["k0", "k1", "k2"]), ("ack", "r0"), ("ack", "r1"), ("ack", "r2")]
    # Nothing held: the caller acks at once.
    assert not held.ack_after(request("r3", log))
    held.close()


def test_another_thread_flushes_at_once() -> None:
    log: list[tuple[str, Any]] = []
    held = HeldResults(Recording(log), delay=60)
    held.add("k0", b"{}")
    assert held.ack_after(request("r0", log))
    assert log == [("write", ["k0"]), ("ack", "r0")]
    held.close()


def test_while_other_tasks_run_a_pool_thread_leaves_the_write_to_the_batch() -> None:
    log: list[tuple[str, Any]] = []
    held = HeldResults(Recording(log), delay=60)
    held.add("k0", b"{}")
    assert held.ack_after(request("r0", log), others_running=True)
    assert log == []
    held.add("k1", b"{}")
    assert held.ack_after(request("r1", log), others_running=False)  # the last one
    assert log == [("write", ["k0", "k1"]), ("ack", "r0"), ("ack", "r1")]
    held.close()


def test_what_waits_too_long_is_written_by_the_flusher() -> None:
    log: list[tuple[str, Any]] = []
    held = HeldResults(Recording(log), delay=0.01)
    held.hold_here()
    held.add("k0", b"{}")
    held.ack_after(request("r0", log))
    wait_until(lambda: len(log) == 2, 5, "the flusher to write and ack")
    assert log == [("write", ["k0"]), ("ack", "r0")]
    held.close()


def test_a_result_that_could_not_be_stored_is_logged_and_its_message_acked() -> None:
    """As a result written on its own: the task ran, so its message is not run again."""
    log: list[tuple[str, Any]] = []
    held = HeldResults(Recording(log, fail=1), delay=60)
    held.add("k0", b"{}")
    held.ack_after(request("r0", log))
    assert log == [("ack", "r0")]
    held.close()


def test_acks_never_overtake_results_across_threads() -> None:
    """Many threads add and ack at once: every ack comes after the write of its key."""
    log: list[tuple[str, Any]] = []
    lock = threading.Lock()

    class Locked(list[tuple[str, Any]]):
        def append(self, item: tuple[str, Any]) -> None:
            with lock:
                super().append(item)

    shared = Locked()
    held = HeldResults(Recording(shared), delay=0.001)

    def work(t: int) -> None:
        for n in range(200):
            held.add(f"k{t}-{n}", b"{}")
            if not held.ack_after(request(f"k{t}-{n}", shared)):
                shared.append(("ack", f"k{t}-{n}"))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held.close()
    written: set[str] = set()
    for kind, what in list(shared):
        if kind == "write":
            written.update(what)
        else:
            assert what in written, f"{what} acked before its result was written"
    assert len(written) == 800
    del log
