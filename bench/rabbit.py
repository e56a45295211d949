"""``bench/run --broker amqp``: the frameworks' queues on RabbitMQ, the rest on Redis.

Each framework gets a vhost of its own on the local RabbitMQ (``taskq-bench-taskq``,
``taskq-bench-celery``, ``taskq-bench-dramatiq``), as each gets a database of its
own on the bench Redis: Dramatiq declares its queue ``bench`` with other arguments
than Celery and taskq do, and one vhost would refuse one of them. The bench
creates the vhosts with ``rabbitmqctl`` when the run starts and deletes them (and
so every queue and message in them) when it ends; between rows it deletes the
queues a row may have left, so each row starts empty. Results (W3's ``get()``)
and the completion counter stay on the bench's Redis servers, so the Redis
command counts of these rows are the result backend's only.

Huey has no RabbitMQ broker: it is left out.
"""

from __future__ import annotations

import shutil
import subprocess

import kombu

from bench.procs import BenchError

HOST = "127.0.0.1:5672"
PREFIX = "taskq-bench"
FRAMEWORKS = ("taskq", "celery", "dramatiq")
#: Queues a row may leave behind: the work queue, Dramatiq's delay and dead-letter
#: queues, taskq's dead letters.
QUEUES = ("bench", "bench.DQ", "bench.XQ", "taskq.dead_letters")


def vhost(framework: str) -> str:
    return f"{PREFIX}-{framework}"


def url(framework: str) -> str:
    return f"amqp://guest:guest@{HOST}/{vhost(framework)}"


def _ctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()[:300]}")


def create(frameworks: set[str]) -> None:
    """Make each framework's vhost (anew: one a stopped run left is deleted first)."""
    if shutil.which("rabbitmqctl") is None:
        raise BenchError("--broker amqp needs rabbitmqctl on PATH (it makes the bench vhosts).")
    for framework in FRAMEWORKS:
        if framework in frameworks:
            subprocess.run(["rabbitmqctl", "delete_vhost", vhost(framework)], capture_output=True)
            _ctl("add_vhost", vhost(framework))
            _ctl("set_permissions", "-p", vhost(framework), "guest", ".*", ".*", ".*")


def delete(frameworks: set[str]) -> None:
    for framework in FRAMEWORKS:
        if framework in frameworks:
            subprocess.run(
                ["rabbitmqctl", "delete_vhost", vhost(framework)], capture_output=True, timeout=120
            )


def reset(framework: str) -> None:
    """Delete the queues a row may have left in ``framework``'s vhost (a missing
    queue is no error), so the next row starts from empty queues."""
    with kombu.Connection(url(framework), connect_timeout=10) as conn:
        channel = conn.channel()
        for name in QUEUES:
            channel.queue_delete(name)
        channel.close()
