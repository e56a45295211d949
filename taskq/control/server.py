"""The worker's side of remote control: a thread consuming its pidbox queue.

``ControlServer`` declares ``<hostname>.celery.pidbox``, bound to the broadcast
exchange, on a kombu connection of its own and answers each command addressed
to this worker through ``taskq.control.commands``. A message that is not a
command (not a JSON object with a ``method``, bad ``arguments``, an unreadable
``reply_to``) is logged and answered with an error where an answer is possible;
nothing a message contains can stop the thread or reach the worker except
through ``WorkerHandle``. A lost connection is re-opened with a growing pause.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import kombu
from kombu.clocks import LamportClock
from kombu.matcher import match
from kombu.pidbox import Mailbox

from taskq.control import commands
from taskq.control.handle import WorkerHandle
from taskq.errors import SecurityError
from taskq.security.commands import SIGNATURE, CommandVerifier

log = logging.getLogger("taskq.control")


class ControlServer:
    """Answers remote control commands for ``handle`` (see the module docstring).

    Args:
        connection: makes the kombu connection to consume on.
        handle: the worker, as commands may see it.
        mailbox: the pidbox (``taskq.control.mailbox.mailbox``).
        clock: the worker's Lamport clock, moved past each command's.
        verifier: with ``security_keys`` set, checks each command's signature
            (``taskq.security.commands``); a command it refuses gets an error reply.
    """

    def __init__(
        self,
        connection: Callable[[], kombu.Connection],
        handle: WorkerHandle,
        mailbox: Mailbox,
        clock: LamportClock,
        verifier: CommandVerifier | None = None,
    ) -> None:
        self.handle = handle
        self._verifier = verifier
        self.ready = threading.Event()
        self._connect = connection
        self._mailbox = mailbox
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._node: Any = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="taskq-control", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        pause = 0.2
        while not self._stop.is_set():
            try:
                self._serve()
            except Exception as exc:
                self.ready.clear()
                if self._stop.is_set():
                    return
                if "RESOURCE_LOCKED" in str(exc) or getattr(exc, "code", None) == 405:
                    log.error(
                        "Remote control: another worker named %s holds this name's control "
                        "queue; give each worker a unique name (-n). Retrying in %.1fs",
                        self.handle.hostname,
                        pause,
                    )
                else:
                    log.warning(
                        "Remote control: connection lost (%s); retrying in %.1fs", exc, pause
                    )
                self._stop.wait(pause)
                pause = min(pause * 2, 5.0)
            else:
                return

    def _serve(self) -> None:
        with self._connect() as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()
            self._node = self._mailbox(conn).Node(self.handle.hostname, channel=channel)
            with self._node.listen(channel=channel, callback=self._on_message):
                with contextlib.suppress(TimeoutError):  # Redis subscribes on the first drain
                    conn.drain_events(timeout=0.01)
                self.ready.set()
                log.info("Remote control: listening as %s", self.handle.hostname)
                while not self._stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        conn.drain_events(timeout=0.5)

    def _on_message(self, body: Any, message: Any) -> None:
        try:
            self._handle(body, message)
        except Exception:  # nothing in a message may end the thread
            log.exception("Remote control: could not handle %r", body)

    def _handle(self, body: Any, message: Any) -> None:
        clock = (getattr(message, "headers", None) or {}).get("clock")
        if isinstance(clock, int):
            self._clock.adjust(clock)
        self._clock.forward()
        if not isinstance(body, dict):
            log.warning("Remote control: ignored a message that is not a command: %r", body)
            return
        if not self._for_me(body):
            return
        method, arguments = body.get("method"), body.get("arguments") or {}
        if not isinstance(method, str):
            reply: Any = {"error": f"A control message needs a 'method' (a name), got {method!r}."}
        elif not isinstance(arguments, dict) or not all(isinstance(k, str) for k in arguments):
            reply = {"error": f"'arguments' of {method!r} must be an object, got {arguments!r}."}
        else:
            reply = self._command(method, arguments, body.get("destination"))
        reply_to = body.get("reply_to")
        if reply_to is None:
            if isinstance(reply, dict) and "error" in reply:
                log.warning("Remote control: %s", reply["error"])
            return
        if not isinstance(reply_to, dict) or not all(
            isinstance(reply_to.get(k), str) for k in ("exchange", "routing_key")
        ):
            log.warning("Remote control: cannot reply to %r (%s)", reply_to, method)
            return
        self._node.reply(
            {self.handle.hostname: reply},
            exchange=reply_to["exchange"],
            routing_key=reply_to["routing_key"],
            ticket=body.get("ticket"),
        )

    def _command(self, method: str, arguments: dict[str, Any], destination: Any) -> Any:
        if self._verifier is not None:
            try:
                arguments = self._verifier.check(method, arguments, destination)
            except SecurityError as exc:
                log.warning("Remote control: refused: %s", exc)
                return {"error": f"refused: {exc}"}
        else:
            arguments.pop(SIGNATURE, None)  # signed by a client with keys this worker lacks
        log.debug("Remote control: %s(%r)", method, arguments)
        return commands.dispatch(self.handle, method, arguments)

    def _for_me(self, body: dict[str, Any]) -> bool:
        """Celery's rule: named in ``destination``, or matching ``pattern``, or both unset."""
        destination, pattern = body.get("destination"), body.get("pattern")
        hostname = self.handle.hostname
        if destination:
            return isinstance(destination, (list, tuple)) and hostname in destination
        if pattern and body.get("matcher"):
            try:
                return bool(match(hostname, pattern, body["matcher"]))
            except Exception:  # an unknown matcher: not addressed to anyone we can tell
                return False
        return True
