"""Signatures on remote control commands (Celery's pidbox), with ``security_keys``.

Celery's pidbox has no signatures, so whoever can write to the broker could
shut workers down, change their limits or revoke tasks. With ``security_keys``
set, taskq's control client (``app.control``, ``taskq control``/``inspect``)
signs each command, and workers refuse (with an error reply) any command that is
not signed by a trusted key, is older than ``WINDOW`` seconds, or was seen
before (a replay). Celery's own tools cannot sign, so they are refused too
unless ``security_accept_unsigned`` is on (a roll-out).

The signature travels in the command's ``arguments`` (the one part of a pidbox
message a client controls), under ``SIGNATURE``; the worker removes it before
the command runs. It is HMAC-SHA256 with the key's signing key over the method,
the other arguments, the destination, a time and a random nonce, as canonical
JSON.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from taskq.errors import SecurityError
from taskq.security.keys import Keyring

__all__ = ["SIGNATURE", "WINDOW", "CommandVerifier", "sign_command"]

#: The argument that carries a command's signature.
SIGNATURE = "taskq_signature"
#: Seconds a signed command stays valid (clocks of client and worker may differ by
#: this much); a signature is accepted once within it.
WINDOW = 60.0


def sign_command(
    keyring: Keyring,
    method: str,
    arguments: Mapping[str, Any],
    destination: Sequence[str] | None,
    now: float | None = None,
) -> dict[str, Any]:
    """``arguments`` with the signature of this command added."""
    key = keyring.current
    at = time.time() if now is None else now
    nonce = os.urandom(16).hex()
    mac = _mac(key.sign, method, arguments, destination, at, nonce)
    signature = {"key": key.id, "at": at, "nonce": nonce, "mac": mac}
    return {**arguments, SIGNATURE: signature}


class CommandVerifier:
    """Checks command signatures for one worker and remembers the ones it accepted,
    so a recorded command cannot be replayed.

    Args:
        keyring: the trusted keys.
        accept_unsigned: also run commands without a signature (a roll-out).
        clock: unix time (tests drive it).
    """

    def __init__(
        self,
        keyring: Keyring,
        *,
        accept_unsigned: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keyring = keyring
        self._accept_unsigned = accept_unsigned
        self._clock = clock
        self._seen: dict[str, float] = {}  # mac -> when it stops being valid
        self._lock = threading.Lock()

    def check(self, method: str, arguments: Mapping[str, Any], destination: Any) -> dict[str, Any]:
        """The command's arguments without the signature.

        Raises:
            SecurityError: unsigned (unless ``accept_unsigned``), signed with an
                unknown key, altered, too old or from the future, or a replay.
        """
        arguments = dict(arguments)
        signature = arguments.pop(SIGNATURE, None)
        if signature is None:
            if self._accept_unsigned:
                return arguments
            raise SecurityError(
                f"remote control command {method!r} is not signed, and security_keys is "
                "set, so only commands signed by a trusted key run (taskq's app.control "
                "and CLI sign them; Celery's tools cannot). During a roll-out set "
                "security_accept_unsigned=True."
            )
        mac = self._verify(method, arguments, destination, signature)
        with self._lock:
            now = self._clock()
            self._seen = {m: until for m, until in self._seen.items() if until > now}
            if mac in self._seen:
                raise SecurityError(f"remote control command {method!r} was replayed")
            self._seen[mac] = float(signature["at"]) + WINDOW
        return arguments

    def _verify(self, method: str, arguments: dict[str, Any], destination: Any, sig: Any) -> str:
        if not isinstance(sig, dict) or not all(
            isinstance(sig.get(k), t) for k, t in (("key", str), ("nonce", str), ("mac", str))
        ):
            raise SecurityError(f"remote control command {method!r} has a malformed signature")
        key = self._keyring.keys.get(sig["key"])
        if key is None:
            raise SecurityError(
                f"remote control command {method!r} is signed with key {sig['key']!r}, "
                "which this worker does not have"
            )
        at = sig.get("at")
        if isinstance(at, bool) or not isinstance(at, (int, float)):
            raise SecurityError(f"remote control command {method!r} has no signing time")
        if abs(self._clock() - at) > WINDOW:
            raise SecurityError(
                f"remote control command {method!r} was signed {self._clock() - at:.0f}s "
                f"from now, outside the {WINDOW:g}s window (a replay, or clocks apart)"
            )
        expected = _mac(key.sign, method, arguments, destination, at, sig["nonce"])
        if not hmac.compare_digest(expected, sig["mac"]):
            raise SecurityError(
                f"remote control command {method!r}: the signature does not match key "
                f"{key.id!r}; it was altered or forged"
            )
        return expected


def _mac(
    key: bytes,
    method: str,
    arguments: Mapping[str, Any],
    destination: Any,
    at: float,
    nonce: str,
) -> str:
    signed = {
        "method": method,
        "arguments": arguments,
        "destination": (
            sorted(map(str, destination)) if isinstance(destination, (list, tuple)) else None
        ),
        "at": at,
        "nonce": nonce,
    }
    text = json.dumps(signed, sort_keys=True, separators=(",", ":"), default=repr)
    return hmac.new(key, text.encode("utf-8"), "sha256").hexdigest()
