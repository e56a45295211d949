"""The taskq side of the interop suite: ``taskq -A tests.interop.taskq_app worker``
reads its broker and queue from the environment (INTEROP_BROKER, INTEROP_BACKEND,
INTEROP_QUEUE, INTEROP_PREFIX); ``make`` builds the same app in the test process."""

from __future__ import annotations

import os
from typing import Any

from taskq import App
from tests.interop.tasks import define


def make(broker: str, backend: str, queue: str, prefix: str, **settings: Any) -> App:
    options = {"key_prefix": prefix} if broker.startswith("redis") else {}
    app = App(
        "interop",
        broker=broker,
        backend=backend,
        task_default_queue=queue,
        broker_transport_options=options,
        worker_lease_timeout=10.0,
        set_as_current=False,
        **settings,
    )
    define(app.task)
    return app


if "INTEROP_BROKER" in os.environ:
    app = make(
        os.environ["INTEROP_BROKER"],
        os.environ["INTEROP_BACKEND"],
        os.environ["INTEROP_QUEUE"],
        os.environ["INTEROP_PREFIX"],
    )
