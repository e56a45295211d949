"""W8's seed: one no-op message to each named queue, sent with the framework's own API.

``python -m bench.scale_seed FRAMEWORK QUEUE[,QUEUE...]`` (the bench's environment:
``BENCH_BROKER_URL`` and the rest). ``bench.scale`` then copies each seeded message,
with fresh ids, as many times as the workload needs: pre-loading 1,000,000 tasks
through any framework's producer would take minutes, and the copies are the very
messages that producer writes.
"""

from __future__ import annotations

import sys


def seed(framework: str, queues: list[str]) -> None:
    if framework == "taskq":
        from bench.apps import taskq_app

        for queue in queues:
            taskq_app.noop.apply_async((), queue=queue)
    elif framework == "celery":
        from bench.apps import celery_app

        for queue in queues:
            celery_app.noop.apply_async((), queue=queue)
    elif framework == "dramatiq":
        from bench.apps import dramatiq_app

        for queue in queues:
            dramatiq_app.broker.enqueue(dramatiq_app.noop.message().copy(queue_name=queue))
    elif framework == "huey":
        from bench.apps import huey_app

        if queues != [huey_app.QUEUE]:
            raise SystemExit("huey has one queue per Huey instance: no -Q to spread over")
        huey_app.noop()
    else:
        raise SystemExit(f"unknown framework {framework!r}")


if __name__ == "__main__":
    seed(sys.argv[1], sys.argv[2].split(","))
