"""The broker on kombu transports: RabbitMQ (``amqp://``) and ``memory://``.

``broker`` is the ``Broker``; ``delay`` keeps countdown/ETA messages in RabbitMQ's
TTL levels. On RabbitMQ the broker writes its publish frames (``frames``), reads
its deliveries (``reader``, ``inbound``), tracks publisher confirms (``confirms``)
and acks runs of delivery tags at once (``acks``).
"""

from taskq.broker.amqp.broker import KombuBroker

__all__ = ["KombuBroker"]
