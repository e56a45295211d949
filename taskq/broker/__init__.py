"""Brokers, chosen by URL scheme and imported lazily."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from taskq.broker.base import Broker, Delivery, Envelope, QueueSpec
from taskq.config import broker_url_of
from taskq.errors import ConfigurationError, did_you_mean
from taskq.queues import Queues
from taskq.urls import mask_url

if TYPE_CHECKING:
    from taskq.config import Settings

__all__ = [
    "KNOWN_SCHEMES",
    "Broker",
    "Delivery",
    "Envelope",
    "QueueSpec",
    "broker_from_url",
    "connect",
]

_BY_SCHEME = {
    "redis": "taskq.broker.redis:RedisBroker",
    "rediss": "taskq.broker.redis:RedisBroker",
    "sqlite": "taskq.broker.sqlite:SqliteBroker",
    "amqp": "taskq.broker.amqp.broker:KombuBroker",
    "amqps": "taskq.broker.amqp.broker:KombuBroker",
    "pyamqp": "taskq.broker.amqp.broker:KombuBroker",
    "memory": "taskq.broker.amqp.broker:KombuBroker",
}
KNOWN_SCHEMES = tuple(_BY_SCHEME)

#: URL forms people try that taskq does not take, and what to do instead.
_UNSUPPORTED = {
    "sentinel": "Redis Sentinel is not supported: give the current primary's redis:// URL",
    "redis+sentinel": "Redis Sentinel is not supported: give the current primary's redis:// URL",
    "redis+socket": "Redis over a Unix socket is not supported as a broker: use redis://host:port",
    "unix": "Redis over a Unix socket is not supported as a broker: use redis://host:port",
    "librabbitmq": "use amqp:// (py-amqp)",
}


def broker_from_url(
    url: str,
    *,
    consumer_id: str,
    options: dict[str, Any] | None = None,
    queues: Queues | None = None,
) -> Broker:
    """The broker for ``url``.

    Raises:
        ConfigurationError: the URL has no scheme or an unknown one.
    """
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in _UNSUPPORTED:
        raise ConfigurationError(
            f"Broker URL {mask_url(url)!r}: {_UNSUPPORTED[scheme]}. "
            f"Supported schemes: {', '.join(KNOWN_SCHEMES)}."
        )
    if scheme not in _BY_SCHEME:
        raise ConfigurationError(
            f"Unknown broker URL {mask_url(url)!r}.{did_you_mean(scheme, _BY_SCHEME)} "
            f"Known schemes: {', '.join(KNOWN_SCHEMES)}."
        )
    module_name, cls_name = _BY_SCHEME[scheme].split(":")
    cls: type[Broker] = getattr(importlib.import_module(module_name), cls_name)
    return cls(url, consumer_id=consumer_id, options=options, queues=queues)


def connect(conf: Settings, consumer_id: str, *, producer: bool = False) -> Broker:
    """A new broker instance for the settings' broker URL and options; nothing
    connects until it is used. Producers and workers each make their own.

    A producer's Redis connections are capped at ``broker_pool_limit`` (Celery's
    setting; at least 2), unless the transport options set ``max_connections``. A
    producer's RabbitMQ publishes collect their confirms as they come
    (``publish_confirms="pipelined"``) unless the transport options say ``"wait"``.
    """
    url = broker_url_of(conf)
    options = {
        "lease_timeout": conf.worker_lease_timeout,
        "connect_timeout": conf.broker_connection_timeout,
        "publish_timeout": conf.broker_publish_timeout,
        **conf.broker_transport_options,
    }
    limit = conf.broker_pool_limit
    if producer and limit and url.startswith(("redis", "unix")):
        options.setdefault("max_connections", max(2, limit))
    if producer and url.startswith(("amqp", "pyamqp")):
        # delay() collects RabbitMQ's confirms as they come (docs/reliability.md).
        options.setdefault("publish_confirms", "pipelined")
    return broker_from_url(
        url, consumer_id=consumer_id, options=options, queues=Queues.from_settings(conf)
    )
