"""``GroupResult``: the results of a group's tasks, read together.

A group result can be saved in the result backend under
``celery-taskset-meta-<group id>`` (Celery's key and layout, results as
``as_tuple()`` trees) and restored by id in another process. Chords save their
header this way, so the header task that completes a chord can find the others.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from taskq.errors import TimeoutError
from taskq.result import AsyncResult, _value, states, task_key

if TYPE_CHECKING:
    from taskq.app import App

GROUP_KEY_PREFIX = "celery-taskset-meta-"
# How many results one refresh reads while ``get`` waits through a big group.
_WINDOW = 500


def group_key(group_id: str) -> str:
    return f"{GROUP_KEY_PREFIX}{group_id}"


class GroupResult(AsyncResult[list[Any]]):
    """The results of a group, in the group's order (``GroupResult(id, results, app=app)``).

    ``get()`` returns the list of values (a nested group gives a nested list).
    Each state check reads every result in one ``mget``.
    """

    def __init__(
        self,
        id: str,
        results: Sequence[AsyncResult[Any]],
        app: App | None = None,
        parent: AsyncResult[Any] | None = None,
    ) -> None:
        super().__init__(id, app=app, parent=parent)
        self.results = list(results)

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    @property
    def children(self) -> list[AsyncResult[Any]]:
        return self.results

    def leaves(self) -> list[AsyncResult[Any]]:
        """Every task result, nested groups flattened, in order."""
        found: list[AsyncResult[Any]] = []
        for result in self.results:
            found.extend(result.leaves() if isinstance(result, GroupResult) else [result])
        return found

    # -- state -----------------------------------------------------------------------

    def metas(self) -> list[dict[str, Any] | None]:
        """The stored meta of every task (None: nothing stored), leaves in order, read
        in one ``mget``."""
        return self._read([r.id for r in self.leaves()])

    def _read(self, task_ids: list[str]) -> list[dict[str, Any] | None]:
        backend = self.backend
        datas = backend.mget([task_key(task_id) for task_id in task_ids])
        return [backend.decode(data) if data is not None else None for data in datas]

    def _states(self) -> list[str]:
        return [str(meta["status"]) if meta else states.PENDING for meta in self.metas()]

    @property
    def state(self) -> str:
        """SUCCESS when every task succeeded, FAILURE when one failed, else PENDING."""
        found = self._states()
        if all(s == states.SUCCESS for s in found):
            return states.SUCCESS
        if any(s == states.FAILURE for s in found):
            return states.FAILURE
        return states.PENDING

    status = state

    @property
    def result(self) -> list[Any]:
        """The current value (or exception, or None when not ready) of each task."""
        return [r.result for r in self.results]

    def ready(self) -> bool:
        """Whether every task finished (succeeded, failed or was revoked)."""
        return all(s in states.READY_STATES for s in self._states())

    def successful(self) -> bool:
        return all(s == states.SUCCESS for s in self._states())

    def failed(self) -> bool:
        """Whether any task failed."""
        return any(s == states.FAILURE for s in self._states())

    def waiting(self) -> bool:
        """Whether any task is not finished yet."""
        return not self.ready()

    def completed_count(self) -> int:
        """How many tasks succeeded."""
        return sum(s == states.SUCCESS for s in self._states())

    # -- waiting ---------------------------------------------------------------------

    def get(
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.05
    ) -> list[Any]:
        """Wait for every task and return their values in the group's order.

        Reads the results in batches (one ``mget`` each) and waits on the first
        one not ready, so a group of thousands costs a handful of round trips.

        Raises:
            TimeoutError: not every task finished within ``timeout`` seconds.
            Exception: with ``propagate``, the exception of the first failed task
                in the group's order.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        leaves = self.leaves()
        metas: dict[str, dict[str, Any]] = {}
        for position, result in enumerate(leaves):
            if result.id not in metas:
                self._refresh(leaves[position:], metas)
            if result.id not in metas:
                metas[result.id] = self._wait(result.id, deadline, timeout, interval)
            meta = metas[result.id]
            if propagate and meta["status"] in states.PROPAGATE_STATES:
                raise _value(meta)
        return self._values(metas)

    join = get

    def _refresh(self, pending: list[AsyncResult[Any]], metas: dict[str, dict[str, Any]]) -> None:
        ids = [r.id for r in pending if r.id not in metas][:_WINDOW]
        for task_id, meta in zip(ids, self._read(ids), strict=True):
            if meta is not None and meta["status"] in states.READY_STATES:
                metas[task_id] = meta

    def _wait(
        self, task_id: str, deadline: float | None, timeout: float | None, interval: float
    ) -> dict[str, Any]:
        remaining = None if deadline is None else deadline - time.monotonic()
        try:
            if remaining is not None and remaining <= 0:
                raise TimeoutError(task_id)
            return self.backend.wait_for(task_id, remaining, interval)
        except TimeoutError:
            raise TimeoutError(
                f"group {self.id}: task {task_id} (and maybe others) not ready after {timeout}s"
            ) from None

    def _values(self, metas: dict[str, dict[str, Any]]) -> list[Any]:
        return [
            r._values(metas) if isinstance(r, GroupResult) else _value(metas[r.id])
            for r in self.results
        ]

    # -- acting on the tasks ---------------------------------------------------------

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM") -> None:
        """Ask workers not to run any of the group's tasks."""
        self.app.control.revoke([r.id for r in self.leaves()], terminate=terminate, signal=signal)

    def forget(self) -> None:
        """Remove every task's stored result and the saved group."""
        for result in self.results:
            result.forget()
        self.delete()

    # -- saving ----------------------------------------------------------------------

    def save(self) -> None:
        """Store the group (its ids, not its values) so ``restore(id)`` finds it."""
        backend = self.backend
        meta = {"result": as_tuple(self), "task_id": self.id}
        backend.set(group_key(self.id), backend.encode(meta), backend.expires)

    def delete(self) -> None:
        """Remove the saved group."""
        self.backend.delete(group_key(self.id))

    @classmethod
    def restore(cls, group_id: str, app: App) -> GroupResult | None:
        """The group saved under ``group_id``, or None when there is none."""
        backend = app.results.require()
        data = backend.get(group_key(group_id))
        if data is None:
            return None
        restored = from_tuple(backend.decode(data)["result"], app)
        return restored if isinstance(restored, GroupResult) else None


def as_tuple(result: AsyncResult[Any]) -> list[Any]:
    """Celery's tree form of a result: ``[[id, parent], children or None]``."""
    if isinstance(result, GroupResult):
        return [[result.id, None], [as_tuple(r) for r in result.results]]
    return [[result.id, None], None]


def from_tuple(data: Any, app: App) -> AsyncResult[Any]:
    """The result an ``as_tuple`` tree describes."""
    (result_id, _parent), children = data
    if children is not None:
        return GroupResult(str(result_id), [from_tuple(c, app) for c in children], app=app)
    return AsyncResult(str(result_id), app=app)
