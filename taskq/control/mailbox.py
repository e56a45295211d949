"""Celery's remote control mailbox ("pidbox"), as kombu implements it.

Commands are published on the fanout exchange ``celery.pidbox`` (Celery's
``control_exchange`` plus ``.pidbox``): every worker's queue
``<hostname>.celery.pidbox`` gets each one and a worker acts on those whose
``destination`` names it (or that name nobody). A command that wants replies
carries ``reply_to``: the direct exchange ``reply.celery.pidbox`` and the
caller's routing key, with a ``ticket`` the replies repeat. kombu's ``Mailbox``
builds exactly these exchanges and queues on RabbitMQ and Redis, which is why
taskq uses it rather than declaring them itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kombu.pidbox import Mailbox

if TYPE_CHECKING:
    from taskq.config import Settings


def mailbox(conf: Settings) -> Mailbox:
    """The mailbox Celery's ``app.control`` makes for the same settings."""
    return Mailbox(
        conf.control_exchange,
        type="fanout",
        accept=list(conf.accept_content),
        serializer=conf.task_serializer,
        queue_ttl=conf.control_queue_ttl,
        reply_queue_ttl=conf.control_queue_ttl,
        queue_expires=conf.control_queue_expires,
        reply_queue_expires=conf.control_queue_expires,
        queue_exclusive=True,
        queue_durable=False,
    )
