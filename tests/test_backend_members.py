"""``Backend.add_member``, the primitive behind the idempotent chord counter, on
every backend of the contract suite (whose fixtures this module reuses)."""

from __future__ import annotations

import threading
import time

import pytest

from taskq.backends.base import Backend
from taskq.backends.memory import MemoryBackend
from tests import test_backends
from tests.test_backends import MakeBackend

# The contract suite's fixtures, parametrised over every backend as they are there.
make_backend = test_backends.make_backend
backend = test_backends.backend


class TestAddMember:
    def test_counts_each_member_once(self, backend: Backend, unique: str) -> None:
        key = f"set-{unique}"
        assert backend.add_member(key, "0", 60) == 1
        assert backend.add_member(key, "1", 60) == 2
        assert backend.add_member(key, "0", 60) == 2  # a duplicate changes nothing
        assert backend.add_member(f"other-{unique}", "0", 60) == 1

    def test_concurrent_adds_with_duplicates(self, backend: Backend, unique: str) -> None:
        key, seen, lock = f"set-{unique}", [], threading.Lock()

        def add(offset: int) -> None:
            sizes = [backend.add_member(key, str((n + offset) % 50), 60) for n in range(50)]
            with lock:
                seen.extend(sizes)

        threads = [threading.Thread(target=add, args=(n * 7,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        # Each member went in four times: the full size was seen, never more.
        assert len(seen) == 200 and max(seen) == 50
        assert backend.add_member(key, "new", 60) == 51

    def test_delete_removes_the_set(self, backend: Backend, unique: str) -> None:
        key = f"set-{unique}"
        backend.add_member(key, "0", 60)
        backend.add_member(key, "1", 60)
        backend.delete(key)
        assert backend.add_member(key, "2", 60) == 1

    @pytest.mark.slow
    def test_expires(self, make_backend: MakeBackend, unique: str) -> None:
        backend = make_backend()
        key = f"set-{unique}"
        backend.add_member(key, "0", 0.5)
        assert backend.add_member(key, "1", 0.5) == 2
        # Expiry is by the clock, nothing to wait for but the clock itself.
        time.sleep(0.6)
        assert backend.add_member(key, "2", 60) == 1


def test_default_implementation_needs_only_the_primitives() -> None:
    class Plain(MemoryBackend):
        add_member = Backend.add_member  # the fallback built on incr and get

    backend = Plain("memory://")
    assert [backend.add_member("k", m, None) for m in ("a", "b", "a", "c")] == [1, 2, 2, 3]
