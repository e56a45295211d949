"""The broker on kombu transports: RabbitMQ (``amqp://``) and ``memory://``.

``broker`` is the ``Broker``; ``delay`` keeps countdown/ETA messages in RabbitMQ's
TTL levels.
"""

from taskq.broker.amqp.broker import KombuBroker

__all__ = ["KombuBroker"]
