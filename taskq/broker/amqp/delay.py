"""Delayed delivery on RabbitMQ: ETA messages wait in the broker, never in a worker.

This is the topology of Celery 5.5's "native delayed delivery"
(``kombu.transport.native_delayed_delivery``) under taskq's own names, so a
countdown costs the worker no memory and no prefetch slot while it waits.

For each level ``L`` in 0..27 there is a topic exchange and a queue, both named
``taskq.delayed.L``. Queue ``L`` holds messages for ``2**L`` seconds
(``x-message-ttl``), then dead-letters them to exchange ``L-1`` (level 0 to the
topic exchange ``taskq.delivery``). The routing key of a delayed message is its
delay in whole seconds as 28 binary words, most significant first, then the
escaped destination queue name: ``0.0.(...).1.0.1.<queue>`` waits 5 seconds.
Exchange ``L`` checks word ``27-L``: a ``1`` goes to queue ``L`` and waits
``2**L`` seconds, a ``0`` falls through to exchange ``L-1`` at once. Publishing to
exchange 27 therefore waits exactly the delay (plus a few milliseconds per set
bit) and then reaches ``taskq.delivery``, where each destination queue is bound
by its own name. Every queue has one TTL, so expiry is in FIFO order and a short
delay never waits behind a long one.

Decisions:

* Quorum queues with ``x-dead-letter-strategy: at-least-once`` (and the
  ``x-overflow: reject-publish`` it requires) by default. Classic queues
  dead-letter at most once: a message moving between levels is dropped if the
  target is unavailable, a node restarts mid-move, or nothing is bound for its
  destination queue. A delayed task is usually a retry someone relies on, so
  taskq pays quorum's cost (28 small Raft logs; RabbitMQ >= 3.10) to keep it.
  At-least-once retries a message it cannot route, and 32 of those stall the
  level for everyone, so ``taskq.delivery`` has an alternate exchange: a due
  message whose queue was deleted waits in ``taskq.delivery.unroutable``. The
  broker option ``delayed_delivery="classic"`` trades the safe transfer for
  servers without quorum queues; ``delayed_delivery=False`` turns the topology
  off (the worker then holds ETA messages in memory). All apps on a vhost must
  use the same queue type.
* Precision: the delay is rounded up to whole seconds, so a message is never
  delivered before its ETA and arrives up to 1 s late, plus a few ms per hop,
  plus the worker's fetch. A worker that gets a message before its ETA (clock
  skew, a producer without this topology) publishes it here again, rounded up,
  so even a few milliseconds early means one more second, never a loop and never
  a message held in worker memory. Delays past ``MAX_DELAY`` (8.5 years) are
  clamped and go round again the same way.
* Queue names are escaped (``%``, ``.``, ``*``, ``#`` become ``%25``, ``%2E``,
  ``%2A``, ``%23``) into one routing-key word, and each queue is bound with
  exactly 28 ``*`` words before its name. Celery's ``#.<queue>`` would also
  route a message for ``a.b`` to queue ``b``; this binding cannot. A queue name
  whose escaped form does not fit the 255-byte routing key (about 199 bytes)
  cannot take delayed messages: ``route`` raises ``BrokerError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kombu
from amqp.exceptions import PreconditionFailed

from taskq.errors import BrokerError, ConfigurationError

#: Number of levels (binary digits of the delay in seconds).
LEVELS = 28
#: Longest delay the topology holds in one pass, in seconds (about 8.5 years).
MAX_DELAY = (1 << LEVELS) - 1
QUEUE_TYPES = ("quorum", "classic")

#: AMQP routing keys are short strings (at most 255 bytes).
_MAX_ROUTING_KEY = 255
_ESCAPES = {"%": "%25", ".": "%2E", "*": "%2A", "#": "%23"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}
#: Headers RabbitMQ adds on each dead-lettering; they describe the hops through
#: the delay levels, not the task, so deliveries from the topology drop them.
_DEATH_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)


def delay_seconds(eta: float, now: float) -> int:
    """Whole seconds to wait from ``now`` so that the wait ends at or after ``eta``.

    Rounded up (a message is never early), 0 when ``eta`` has passed, clamped to
    ``MAX_DELAY``.
    """
    return min(MAX_DELAY, max(0, math.ceil(eta - now)))


def escape(queue: str) -> str:
    """``queue`` as one topic word: no dots, and never a ``*`` or ``#`` wildcard."""
    return "".join(_ESCAPES.get(ch, ch) for ch in queue)


def unescape(word: str) -> str:
    """The inverse of ``escape``."""
    out: list[str] = []
    i = 0
    while i < len(word):
        code = word[i : i + 3]
        if code in _UNESCAPES:
            out.append(_UNESCAPES[code])
            i += 3
        else:
            out.append(word[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class DelayTopology:
    """The delay levels and delivery exchange on one vhost (see module docstring).

    Declaring is idempotent and cached per kombu connection (in the connection's
    ``declared_entities``, which kombu clears when it reconnects).
    """

    queue_type: str = "quorum"
    prefix: str = "taskq.delayed"
    delivery_exchange: str = "taskq.delivery"

    def __post_init__(self) -> None:
        if self.queue_type not in QUEUE_TYPES:
            raise ConfigurationError(
                f"Unknown delayed_delivery queue type {self.queue_type!r}. Known: quorum, "
                "classic, or False to hold ETA tasks in worker memory."
            )

    def level(self, n: int) -> str:
        """Name of level ``n``'s exchange and queue."""
        return f"{self.prefix}.{n}"

    @property
    def entry_exchange(self) -> str:
        """Where delayed messages are published: the highest level."""
        return self.level(LEVELS - 1)

    def queue_arguments(self, n: int) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "x-queue-type": self.queue_type,
            "x-message-ttl": 2**n * 1000,
            "x-dead-letter-exchange": self.level(n - 1) if n else self.delivery_exchange,
            "x-overflow": "reject-publish",  # at-least-once requires it; inert without a limit
        }
        if self.queue_type == "quorum":
            arguments["x-dead-letter-strategy"] = "at-least-once"
        return arguments

    def routing_key(self, delay: int, queue: str) -> str:
        """The key that makes ``taskq.delayed.27`` hold a message ``delay`` s for ``queue``."""
        if not 0 < delay <= MAX_DELAY:
            raise ValueError(f"delay must be 1..{MAX_DELAY} seconds, got {delay}")
        key = ".".join(f"{delay:0{LEVELS}b}") + "." + escape(queue)
        if len(key.encode()) > _MAX_ROUTING_KEY:
            raise BrokerError(
                f"Queue name {queue[:40]!r}... is too long for delayed delivery on RabbitMQ: "
                f"the routing key would be {len(key.encode())} bytes (limit "
                f"{_MAX_ROUTING_KEY}). Use a queue name under about 190 bytes."
            )
        return key

    def binding_key(self, queue: str) -> str:
        """How ``queue`` is bound to the delivery exchange: exactly its own messages."""
        return "*." * LEVELS + escape(queue)

    def destination(self, exchange: str | None, routing_key: str) -> str | None:
        """The destination queue of a message that came out of the topology, else None."""
        if exchange != self.delivery_exchange and not (exchange or "").startswith(
            self.prefix + "."
        ):
            return None
        words = routing_key.split(".", LEVELS)
        if len(words) != LEVELS + 1 or any(w not in ("0", "1") for w in words[:LEVELS]):
            return None
        return unescape(words[LEVELS])

    # -- declaring -------------------------------------------------------------------

    def declare(self, channel: Any) -> None:
        """Declare the exchanges, queues and bindings of every level (once per connection).

        Raises:
            BrokerError: a level queue exists with other arguments (another queue type).
        """
        cache = _declared(channel)
        marker = ("taskq.delay.topology", self)
        if cache is not None and marker in cache:
            return
        try:
            self._declare_levels(channel)
        except PreconditionFailed as exc:
            raise BrokerError(
                f"The delayed-delivery queues {self.prefix}.0..{LEVELS - 1} exist with other "
                f"arguments than taskq's {self.queue_type} queues ({exc}). Use the same "
                "delayed_delivery broker option in every app on this vhost, or delete the "
                f"empty {self.prefix}.* queues (rabbitmqctl delete_queue) to re-create them."
            ) from exc
        if cache is not None:
            cache.add(marker)

    @property
    def unroutable(self) -> str:
        """The alternate exchange and queue of the delivery exchange."""
        return f"{self.delivery_exchange}.unroutable"

    def _declare_levels(self, channel: Any) -> None:
        # A due message with no destination queue (deleted, or never declared) goes
        # to the unroutable queue. Without it, at-least-once dead-lettering keeps
        # retrying such messages, and 32 of them stall the level for everyone.
        lost = kombu.Exchange(self.unroutable, "fanout", durable=True)
        kombu.Queue(
            self.unroutable,
            lost,
            queue_arguments={"x-queue-type": self.queue_type},
            durable=True,
        )(channel).declare()
        delivery = kombu.Exchange(
            self.delivery_exchange,
            "topic",
            durable=True,
            arguments={"alternate-exchange": self.unroutable},
        )
        delivery(channel).declare()
        for n in range(LEVELS):
            exchange = kombu.Exchange(self.level(n), "topic", durable=True)(channel)
            exchange.declare()
            skip = "*." * (LEVELS - 1 - n)
            queue = kombu.Queue(
                self.level(n),
                exchange,
                routing_key=skip + "1.#",
                queue_arguments=self.queue_arguments(n),
                durable=True,
            )(channel)
            queue.declare()  # declares the binding too
            below = self.level(n - 1) if n else self.delivery_exchange
            # Exchange ``below`` receives from ``exchange`` what has a 0 at this level.
            channel.exchange_bind(destination=below, source=self.level(n), routing_key=skip + "0.#")

    def bind(self, channel: Any, queue: kombu.Queue) -> None:
        """Declare ``queue`` and bind it to the delivery exchange (once per connection)."""
        cache = _declared(channel)
        marker = ("taskq.delay.bind", self, queue.name)
        if cache is not None and marker in cache:
            return
        self.declare(channel)
        bound = queue(channel)
        bound.declare()
        bound.bind_to(self.delivery_exchange, routing_key=self.binding_key(queue.name))
        if cache is not None:
            cache.add(marker)

    def route(
        self, channel: Any, queue: kombu.Queue, eta: float, now: float
    ) -> tuple[str, str] | None:
        """Prepare to publish a message for ``queue`` due at ``eta``.

        Returns the ``(exchange, routing_key)`` to publish to, or None when the
        message is due within this second's rounding (``eta <= now``): publish it
        to ``queue`` directly.
        """
        delay = delay_seconds(eta, now)
        if delay == 0:
            return None
        key = self.routing_key(delay, queue.name)
        self.bind(channel, queue)
        return self.entry_exchange, key


def _declared(channel: Any) -> set[Any] | None:
    """kombu's per-connection set of declared entities (None when unavailable)."""
    client = getattr(getattr(channel, "connection", None), "client", None)
    cache = getattr(client, "declared_entities", None)
    return cache if isinstance(cache, set) else None


def for_url(url: str, setting: Any = "quorum") -> DelayTopology | None:
    """The topology a broker URL uses: AMQP URLs unless ``setting`` is False.

    Raises:
        ConfigurationError: ``setting`` is not ``"quorum"``, ``"classic"`` or False.
    """
    if not url.startswith(("amqp", "pyamqp")) or setting is False or setting is None:
        return None
    return DelayTopology(str(setting))


def unwrap(
    topology: DelayTopology | None, delivery_info: Mapping[str, Any], headers: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The queue a delivery belongs to and its headers, undoing the delay topology.

    A message that waited in the topology arrives with the delay key as its
    routing key and RabbitMQ's dead-lettering headers; this gives back the
    destination queue name and the headers the producer sent.
    """
    routing_key = str(delivery_info.get("routing_key") or "")
    original = (
        topology.destination(delivery_info.get("exchange"), routing_key) if topology else None
    )
    if original is None:
        return routing_key, headers
    return original, {k: v for k, v in headers.items() if k not in _DEATH_HEADERS}
