"""The Celery side of the interop suite: ``celery -A tests.interop.celery_app worker``
reads its broker and queue from the environment (INTEROP_BROKER, INTEROP_BACKEND,
INTEROP_QUEUE); ``make`` builds the same app in the test process."""

from __future__ import annotations

import functools
import os

from celery import Celery

from tests.interop.tasks import define


def make(broker: str, backend: str, queue: str) -> Celery:
    app = Celery("interop", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        # As a Celery project on Redis would: ETA messages must not come back while
        # a worker holds them (tests/test_interop.py has none that long).
        broker_transport_options={"visibility_timeout": 600},
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        result_extended=True,
    )
    # shared=False: Celery registers a shared task on every app of the process, and
    # the tests make one app per broker.
    define(functools.partial(app.task, shared=False))
    return app


if "INTEROP_BROKER" in os.environ:
    app = make(
        os.environ["INTEROP_BROKER"], os.environ["INTEROP_BACKEND"], os.environ["INTEROP_QUEUE"]
    )
