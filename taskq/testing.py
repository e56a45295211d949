"""Helpers for testing code that uses taskq.

``test_app()`` builds an app on the in-memory broker and backend;
``run_until_empty(app)`` runs a worker in this thread until the queues are
empty; ``running_worker(app)`` runs one in a background thread for the duration
of a ``with`` block. In pytest::

    @pytest.fixture
    def app():
        app = taskq.testing.test_app()
        yield app
        app.close()

    def test_add(app):
        add = app.task(lambda x, y: x + y, name="add")
        result = add.delay(2, 3)
        taskq.testing.run_until_empty(app)
        assert result.get(timeout=1) == 5

For tests that need no worker at all, set ``task_always_eager=True``: calls run
in-process and return an ``EagerResult``.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from taskq.app import App
from taskq.worker.options import WorkerOptions
from taskq.worker.worker import Worker


def test_app(name: str = "tests", **settings: Any) -> App:
    """An app on ``memory://`` for both broker and results, with a queue name of its
    own so apps in one process do not share messages."""
    settings.setdefault("task_default_queue", f"test-{uuid.uuid4().hex[:8]}")
    return App(name, broker="memory://", backend="memory://", **settings)


test_app.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def run_until_empty(
    app: App, queues: list[str] | None = None, pool: str = "solo", concurrency: int = 1
) -> None:
    """Run a worker in this thread until its queues are empty and nothing runs."""
    worker = Worker(app, WorkerOptions(queues=queues, pool=pool, concurrency=concurrency))
    worker.run(burst=True)


@contextlib.contextmanager
def running_worker(
    app: App,
    queues: list[str] | None = None,
    pool: str = "threads",
    concurrency: int = 2,
    ready_timeout: float = 10.0,
    **options: Any,
) -> Iterator[Worker]:
    """Run a worker in a background thread; warm-stop it when the block ends.

    ``pool`` is any pool; ``prefork`` forks its children from this process, so
    they inherit the test's objects (``multiprocessing`` events and queues work
    across them, plain lists and ``threading.Event`` do not) and need a broker and
    backend other processes reach (not ``memory://``). ``options`` are further
    ``WorkerOptions`` fields (``time_limit=``, ``max_tasks_per_child=``, ...).
    """
    worker = Worker(
        app, WorkerOptions(queues=queues, pool=pool, concurrency=concurrency, **options)
    )
    thread = threading.Thread(target=worker.run, name="taskq-test-worker", daemon=True)
    thread.start()
    if not worker.ready.wait(ready_timeout):
        raise RuntimeError(f"worker did not start within {ready_timeout}s")
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(worker.shutdown_timeout + 5)
