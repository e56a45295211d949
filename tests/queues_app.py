"""An app whose queues are declared from its settings, run by tests/test_queues.py as a
worker, a beat and a producer in separate processes. QUEUES_KIND picks the
declaration: ``priority`` (x-max-priority), ``quorum`` or ``dead-letter``."""

from __future__ import annotations

import os
from typing import Any

import kombu

from taskq import App


def settings_for(kind: str, queue: str) -> dict[str, Any]:
    if kind == "priority":
        return {"task_queue_max_priority": 10}
    if kind == "quorum":
        return {"task_default_queue_type": "quorum"}
    if kind == "dead-letter":
        arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{queue}-dead"}
        return {"task_queues": [kombu.Queue(queue, queue_arguments=arguments)]}
    raise ValueError(kind)


def make(kind: str, broker: str, backend: str, queue: str, **settings: Any) -> App:
    app = App(
        "queues",
        broker=broker,
        backend=backend,
        task_default_queue=queue,
        set_as_current=False,
        **settings_for(kind, queue),
        **settings,
    )

    @app.task(name="queues.ping")
    def ping() -> str:
        return "pong"

    @app.task(name="queues.tick")
    def tick() -> str:
        return "tick"

    return app


if "QUEUES_KIND" in os.environ:
    app = make(
        os.environ["QUEUES_KIND"],
        os.environ["QUEUES_BROKER"],
        os.environ["QUEUES_BACKEND"],
        os.environ["QUEUES_QUEUE"],
        beat_schedule={"tick": {"task": "queues.tick", "schedule": 0.5}},
        beat_max_loop_interval=0.5,
    )
