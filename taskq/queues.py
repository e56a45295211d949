"""Queue declarations: one answer, in every process, to "how is queue X declared?".

A producer, a worker and beat in separate processes must declare a queue with the
same arguments, or RabbitMQ refuses the second declaration (``PRECONDITION_FAILED -
inequivalent arg 'x-max-priority'``). So nothing declares a queue from its own
defaults: ``Queues.from_settings(conf)`` builds the table from Celery's settings,
the same way in every process, and each user asks it for a queue's ``QueueSpec``:

* ``task_queues``: kombu ``Queue`` objects (or Celery's dict form
  ``{name: {"exchange": ..., "routing_key": ...}}``). Without it, the one queue
  ``task_default_queue``, on exchange ``task_default_exchange`` (default: the queue's
  name) of type ``task_default_exchange_type`` with routing key
  ``task_default_routing_key`` (default: the queue's name), of type
  ``task_default_queue_type`` (``"classic"`` or ``"quorum"``).
* ``task_queue_max_priority``: ``x-max-priority`` for every queue that sets none.
* A queue not in the table is created as Celery creates it (an exchange named like
  the queue, ``task_create_missing_queue_type``) when ``task_create_missing_queues``
  is on, and is an error otherwise.

On Redis a declaration is kombu's binding entry (``_kombu.binding.<exchange>``); on
RabbitMQ the queue, its exchange and the binding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from taskq.errors import ConfigurationError, did_you_mean

if TYPE_CHECKING:
    import kombu

    from taskq.config import Settings

__all__ = ["QueueSpec", "Queues", "check_task_queues"]

QUEUE_TYPES = ("classic", "quorum")
_DICT_KEYS = frozenset(
    {
        "exchange", "exchange_type", "routing_key", "binding_key", "queue_arguments",
        "max_priority", "durable", "auto_delete", "exclusive",
    }
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class QueueSpec:
    """How one queue is declared.

    Attributes:
        name: the queue.
        max_priority: RabbitMQ's ``x-max-priority`` (None: no priorities). Redis has
            its four priority lists whatever this says.
        exchange: the exchange it is bound to (None: one named like the queue).
        exchange_type: ``direct``, ``topic`` or ``fanout``.
        routing_key: the binding key (None: the queue's name).
        arguments: the other queue arguments (``x-queue-type``, ``x-dead-letter-*``, ...).
        durable: survives a broker restart (RabbitMQ).
    """

    name: str
    max_priority: int | None = None
    exchange: str | None = None
    exchange_type: str = "direct"
    routing_key: str | None = None
    arguments: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    durable: bool = True

    @property
    def exchange_name(self) -> str:
        return self.name if self.exchange is None else self.exchange

    @property
    def binding_key(self) -> str:
        return self.name if self.routing_key is None else self.routing_key

    def queue_arguments(self) -> dict[str, Any]:
        """The arguments RabbitMQ gets, ``x-max-priority`` included."""
        arguments = dict(self.arguments)
        if self.max_priority is not None:
            arguments["x-max-priority"] = self.max_priority
        return arguments

    def to_kombu(self) -> kombu.Queue:
        """The kombu ``Queue`` that declares this queue (and its exchange and binding)."""
        import kombu

        exchange = kombu.Exchange(self.exchange_name, self.exchange_type, durable=self.durable)
        return kombu.Queue(
            self.name,
            exchange,
            routing_key=self.binding_key,
            queue_arguments=self.queue_arguments() or None,
            durable=self.durable,
        )

    @classmethod
    def from_kombu(cls, queue: Any) -> QueueSpec:
        """The spec of a kombu ``Queue`` from ``task_queues``."""
        arguments = dict(queue.queue_arguments or {})
        priority = arguments.pop("x-max-priority", None)
        if queue.max_priority is not None:
            priority = queue.max_priority
        exchange = queue.exchange
        return cls(
            name=queue.name,
            max_priority=priority,
            exchange=exchange.name if exchange is not None and exchange.name else None,
            exchange_type=(exchange.type if exchange is not None else None) or "direct",
            routing_key=queue.routing_key or None,
            arguments=arguments,
            durable=bool(queue.durable),
        )

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> QueueSpec:
        """The spec of Celery's dict form: ``{name: {"exchange": ..., "routing_key": ...}}``."""
        unknown = sorted(set(options) - _DICT_KEYS)
        if unknown:
            raise ConfigurationError(
                f"task_queues[{name!r}] has unknown option {unknown[0]!r}."
                f"{did_you_mean(unknown[0], _DICT_KEYS)} Known: {', '.join(sorted(_DICT_KEYS))}."
            )
        arguments = dict(options.get("queue_arguments") or {})
        priority = options.get("max_priority", arguments.pop("x-max-priority", None))
        exchange = options.get("exchange")
        exchange_type = options.get("exchange_type")
        if exchange is not None and not isinstance(exchange, str):  # a kombu Exchange
            exchange_type = exchange_type or exchange.type
            exchange = exchange.name
        return cls(
            name=name,
            max_priority=priority,
            exchange=exchange or None,
            exchange_type=exchange_type or "direct",
            routing_key=options.get("routing_key") or options.get("binding_key"),
            arguments=arguments,
            durable=bool(options.get("durable", True)),
        )


def check_task_queues(value: Any) -> list[Any] | dict[str, Any] | None:
    """``task_queues`` as it may be set: None, kombu ``Queue`` objects (returned as a
    list) or Celery's dict form ``{name: {option: value}}`` (returned as a dict).

    Raises:
        ConfigurationError: anything else, naming the bad entry.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        for name, options in value.items():
            if not isinstance(options, Mapping):
                raise ConfigurationError(
                    f"task_queues[{name!r}] must be a mapping of options "
                    f"(exchange, routing_key, ...), got {options!r}."
                )
            QueueSpec.from_options(str(name), options)
        return dict(value)
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ConfigurationError(
            f"task_queues must be a list of kombu Queue objects (or a mapping of queue "
            f"name to options), got {value!r}."
        )
    for item in value:
        if not _is_kombu_queue(item):
            raise ConfigurationError(
                f"task_queues entries must be kombu Queue objects, got {item!r}: "
                "from kombu import Queue; task_queues = [Queue('default'), ...]."
            )
    return list(value)


def _is_kombu_queue(item: Any) -> bool:
    import kombu

    return isinstance(item, kombu.Queue) and bool(item.name)


class Queues:
    """The queue table of one configuration (see the module docstring)."""

    def __init__(
        self,
        declared: Mapping[str, QueueSpec],
        *,
        create_missing: bool = True,
        missing_type: str = "classic",
        missing_exchange_type: str | None = None,
        max_priority: int | None = None,
    ) -> None:
        if missing_type not in QUEUE_TYPES:
            raise ConfigurationError(
                f"task_create_missing_queue_type must be 'classic' or 'quorum', "
                f"got {missing_type!r}."
            )
        self.max_priority = max_priority
        self.create_missing = create_missing
        self.missing_type = missing_type
        self.missing_exchange_type = missing_exchange_type
        self._declared = {name: self._with_priority(spec) for name, spec in declared.items()}

    @classmethod
    def from_settings(cls, conf: Settings) -> Queues:
        """The table for ``conf`` (``task_queues`` and the ``task_default_*`` settings)."""
        setting = conf.task_queues or ()
        specs = (
            {name: QueueSpec.from_options(name, options) for name, options in setting.items()}
            if isinstance(setting, Mapping)
            else {queue.name: QueueSpec.from_kombu(queue) for queue in setting}
        )
        if not specs:
            specs[conf.task_default_queue] = default_queue(conf)
        return cls(
            specs,
            create_missing=conf.task_create_missing_queues,
            missing_type=conf.task_create_missing_queue_type,
            missing_exchange_type=conf.task_create_missing_queue_exchange_type,
            max_priority=conf.task_queue_max_priority,
        )

    def _with_priority(self, spec: QueueSpec) -> QueueSpec:
        if spec.max_priority is None and self.max_priority is not None:
            return dataclasses.replace(spec, max_priority=self.max_priority)
        return spec

    def __iter__(self) -> Iterator[QueueSpec]:
        """The declared queues (what a worker consumes when given no ``-Q``)."""
        return iter(self._declared.values())

    def names(self) -> list[str]:
        return list(self._declared)

    def bound_to(self, exchange: str | None, routing_key: str) -> str | None:
        """The declared queue a message to ``exchange`` (None or "": any) with
        ``routing_key`` reaches by a direct binding, if any."""
        for spec in self._declared.values():
            if spec.binding_key == routing_key and exchange in (None, "", spec.exchange_name):
                return spec.name
        return None

    def __getitem__(self, name: str) -> QueueSpec:
        """The spec of queue ``name``; a missing queue is made as Celery makes it.

        Raises:
            ConfigurationError: ``name`` is not declared and
                ``task_create_missing_queues`` is off.
        """
        spec = self._declared.get(name)
        if spec is not None:
            return spec
        if not self.create_missing:
            raise ConfigurationError(
                f"Queue {name!r} is not in task_queues and task_create_missing_queues is "
                f"off.{did_you_mean(name, self._declared)} Declared: "
                f"{', '.join(self._declared)}. Add it to task_queues or route to one of those."
            )
        arguments = {"x-queue-type": "quorum"} if self.missing_type == "quorum" else {}
        return self._with_priority(
            QueueSpec(
                name, exchange_type=self.missing_exchange_type or "direct", arguments=arguments
            )
        )


def default_queue(conf: Settings) -> QueueSpec:
    """``task_default_queue`` as the ``task_default_*`` settings declare it."""
    queue_type = conf.task_default_queue_type
    if queue_type not in QUEUE_TYPES:
        raise ConfigurationError(
            f"task_default_queue_type must be 'classic' or 'quorum', got {queue_type!r}."
        )
    return QueueSpec(
        conf.task_default_queue,
        exchange=conf.task_default_exchange,
        exchange_type=conf.task_default_exchange_type,
        routing_key=conf.task_default_routing_key,
        arguments={"x-queue-type": "quorum"} if queue_type == "quorum" else {},
    )
