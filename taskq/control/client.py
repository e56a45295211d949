"""``app.control`` and ``app.control.inspect()``: Celery's client API for steering
and asking workers.

Every method broadcasts one command on the pidbox (``taskq.control.mailbox``) and,
when it asks for replies, collects them for ``timeout`` seconds or until
``limit`` replies came (the number of ``destination`` names, when given). Replies
are ``[{hostname: reply}, ...]`` from ``Control`` and ``{hostname: reply}`` from
``Inspect`` (None when no worker answered), as in Celery.
"""

from __future__ import annotations

import signal as signal_module
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from taskq.config import broker_url_of
from taskq.control.mailbox import mailbox
from taskq.control.revokes import persist, signal_number
from taskq.errors import ConfigurationError
from taskq.events.connection import broadcasts, connect
from taskq.security.commands import sign_command

if TYPE_CHECKING:
    from taskq.backends.store import ResultStore
    from taskq.config import Settings
    from taskq.security import Security

Reply = dict[str, Any]


def flatten(replies: Iterable[Reply]) -> dict[str, Any]:
    """``[{a: r1}, {b: r2}]`` -> ``{a: r1, b: r2}``, warning when a name answered twice."""
    nodes: dict[str, Any] = {}
    for reply in replies:
        for name, value in reply.items():
            if name in nodes:
                warnings.warn(
                    f"Two workers replied as {name!r}: give each a unique name (-n).",
                    stacklevel=3,
                )
            nodes[name] = value
    return nodes


class Control:
    """``app.control``: commands for workers (Celery's ``Control``).

    Args:
        results: the app's result store, where revoked ids are kept.
        conf: the app's settings: the broker to broadcast on, the pidbox names,
            how long revoked ids are kept. Read at each command, so settings
            changed after the app was made apply.
        security: with ``security_keys`` set, every command is signed
            (``taskq.security.commands``), as workers then require.
    """

    def __init__(self, results: ResultStore, conf: Settings, security: Security) -> None:
        self.results = results
        self.conf = conf
        self.security = security

    @property
    def broker_url(self) -> str:
        """The broker commands are broadcast on (the app's)."""
        return broker_url_of(self.conf)

    @property
    def can_broadcast(self) -> bool:
        """False on a broker without fanout (SQLite): only ``revoke`` works there."""
        return broadcasts(self.broker_url)

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
        callback: Callable[[Reply], None] | None = None,
    ) -> list[Reply] | None:
        """Send ``command`` to every worker, or those named in ``destination``.

        Returns:
            With ``reply``, the replies that came within ``timeout``; else None.

        Raises:
            ConfigurationError: the broker cannot broadcast (SQLite), or
                ``destination`` is a string rather than a list of names.
        """
        if isinstance(destination, str):
            raise ConfigurationError(
                f"destination must be a list of worker names, got the string {destination!r}: "
                f"write destination=[{destination!r}]."
            )
        conf = self.conf
        names = list(destination) if destination else None
        arguments = dict(arguments or {})
        sealer = self.security.sealer
        if sealer is not None:
            arguments = sign_command(sealer.keyring, command, arguments, names)
        conn = connect(
            self.broker_url,
            connect_timeout=conf.broker_connection_timeout,
            what="Remote control",
        )
        with conn:
            box = mailbox(conf)(conn)
            if not reply:
                if names:
                    box.cast(names, command, arguments)
                else:
                    box.abcast(command, arguments)
                return None
            if names:
                return list(box.call(names, command, arguments, timeout, callback))
            return list(box.multi_call(command, arguments, timeout, limit, callback))

    def inspect(
        self,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
        callback: Callable[[Reply], None] | None = None,
        limit: int | None = None,
    ) -> Inspect:
        """Ask workers what they hold and how they are set up (Celery's ``inspect()``)."""
        return Inspect(self, destination, timeout, callback, limit)

    # -- commands -------------------------------------------------------------------------

    def ping(self, destination: Sequence[str] | None = None, timeout: float = 1.0) -> list[Reply]:
        """``[{hostname: {"ok": "pong"}}, ...]`` from every worker that answered."""
        return self.broadcast("ping", {}, destination, reply=True, timeout=timeout) or []

    def revoke(
        self,
        task_id: str | Iterable[str],
        destination: Sequence[str] | None = None,
        terminate: bool = False,
        signal: str | int = "SIGTERM",
        **kwargs: Any,
    ) -> list[Reply] | None:
        """Ask workers not to run the task(s), and with ``terminate`` to stop them.

        Two ways at once. The revoked ids are kept in the result backend (for
        ``result_expires``, or a week when results never expire), so a worker
        started later still honours them and a revoked task that has not started
        is recorded as REVOKED and never runs; and the broadcast ``revoke`` of
        Celery reaches the running workers at once (it needs a Redis or RabbitMQ
        broker). ``terminate=True`` stops a running task: the prefork pool sends
        ``signal`` to the child running it, the asyncio pool cancels a coroutine;
        the threads and solo pools cannot stop a running task. ``"SIGUSR1"``
        raises ``SoftTimeLimitExceeded`` in the task instead.

        Args:
            task_id: one id or several.
            destination: only these workers (the broadcast part).
            terminate: also stop the task if it is running.
            signal: a signal name (``"SIGTERM"``, ``"KILL"``) or number.
            **kwargs: ``reply``, ``timeout``, ``limit``: as for ``broadcast``.

        Raises:
            ConfigurationError: an unknown signal, or neither a result backend nor a
                broker that can broadcast.
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        signum = signal_number(signal)
        backend = self.results.backend
        if backend is None and not self.can_broadcast:
            raise ConfigurationError(
                "Revoking needs a result backend (to remember revoked ids) or a broker that "
                "can broadcast (redis://, amqp://): configure result_backend."
            )
        if backend is not None:
            persist(backend, ids, terminate, signum, self.conf.result_expires)
        if not self.can_broadcast:
            return None
        name = signal_module.Signals(signum).name
        arguments = {"task_id": ids, "terminate": terminate, "signal": name}
        return self.broadcast("revoke", arguments, destination, **kwargs)

    def terminate(
        self,
        task_id: str | Iterable[str],
        destination: Sequence[str] | None = None,
        signal: str | int = "SIGTERM",
        **kwargs: Any,
    ) -> list[Reply] | None:
        """``revoke(task_id, terminate=True)``."""
        return self.revoke(task_id, destination, terminate=True, signal=signal, **kwargs)

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | int | None,
        destination: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[Reply] | None:
        """Set a task's rate limit on workers (``"10/s"``, ``"100/m"``; None: none)."""
        arguments = {"task_name": task_name, "rate_limit": rate_limit}
        return self.broadcast("rate_limit", arguments, destination, **kwargs)

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[Reply] | None:
        """Set a task's soft and hard time limits on workers, in seconds."""
        arguments = {"task_name": task_name, "soft": soft, "hard": hard}
        return self.broadcast("time_limit", arguments, destination, **kwargs)

    def add_consumer(
        self, queue: str, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[Reply] | None:
        """Make workers consume ``queue`` too."""
        return self.broadcast("add_consumer", {"queue": queue}, destination, **kwargs)

    def cancel_consumer(
        self, queue: str, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[Reply] | None:
        """Make workers stop consuming ``queue``."""
        return self.broadcast("cancel_consumer", {"queue": queue}, destination, **kwargs)

    def enable_events(
        self, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[Reply] | None:
        """Make workers send task events."""
        return self.broadcast("enable_events", {}, destination, **kwargs)

    def disable_events(
        self, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[Reply] | None:
        """Make workers stop sending task events."""
        return self.broadcast("disable_events", {}, destination, **kwargs)

    def heartbeat(
        self, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[Reply] | None:
        """Make workers send a heartbeat event now."""
        return self.broadcast("heartbeat", {}, destination, **kwargs)

    def pool_grow(
        self, n: int = 1, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[Reply] | None:
        """Grow the workers' pools by ``n``."""
        return self.broadcast("pool_grow", {"n": n}, destination, **kwargs)

    def pool_shrink(
        self, n: int = 1, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[Reply] | None:
        """Shrink the workers' pools by ``n``."""
        return self.broadcast("pool_shrink", {"n": n}, destination, **kwargs)

    def autoscale(
        self,
        max: int,
        min: int,
        destination: Sequence[str] | None = None,
        **kwargs: Any,  # noqa: A002
    ) -> list[Reply] | None:
        """Set the autoscale bounds of prefork workers started with ``--autoscale``."""
        return self.broadcast("autoscale", {"max": max, "min": min}, destination, **kwargs)

    def shutdown(
        self, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[Reply] | None:
        """Warm-shut workers down."""
        return self.broadcast("shutdown", {}, destination, **kwargs)


class Inspect:
    """``app.control.inspect()``: what workers hold and how they are set up. Each
    method returns ``{hostname: reply}``, or None when no worker answered."""

    def __init__(
        self,
        control: Control,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
        callback: Callable[[Reply], None] | None = None,
        limit: int | None = None,
    ) -> None:
        self.control = control
        self.destination = destination
        self.timeout = timeout
        self.callback = callback
        self.limit = limit

    def _request(self, command: str, **arguments: Any) -> dict[str, Any] | None:
        replies = self.control.broadcast(
            command,
            arguments,
            self.destination,
            reply=True,
            timeout=self.timeout,
            limit=self.limit,
            callback=self.callback,
        )
        return flatten(replies) if replies else None

    def ping(self, destination: Sequence[str] | None = None) -> dict[str, Any] | None:
        if destination:
            self.destination = destination
        return self._request("ping")

    def active(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request("active", safe=safe)

    def reserved(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request("reserved", safe=safe)

    def scheduled(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request("scheduled", safe=safe)

    def registered(self, *taskinfoitems: str) -> dict[str, Any] | None:
        return self._request("registered", taskinfoitems=list(taskinfoitems))

    registered_tasks = registered

    def stats(self) -> dict[str, Any] | None:
        return self._request("stats")

    def revoked(self) -> dict[str, Any] | None:
        return self._request("revoked")

    def active_queues(self) -> dict[str, Any] | None:
        return self._request("active_queues")

    def conf(self, with_defaults: bool = False) -> dict[str, Any] | None:
        return self._request("conf", with_defaults=with_defaults)

    def query_task(self, *ids: str) -> dict[str, Any] | None:
        wanted = list(ids[0]) if len(ids) == 1 and isinstance(ids[0], (list, tuple)) else list(ids)
        return self._request("query_task", ids=wanted)

    def report(self) -> dict[str, Any] | None:
        return self._request("report")

    def clock(self) -> dict[str, Any] | None:
        return self._request("clock")
