"""Sealing: a signed (or signed and encrypted) frame around a message or a result.

A sealed task message keeps its plain headers on the outside (for routing, the
dead-letter tools and people reading a queue) and carries inside the frame the
body, its content type and encoding, and the headers and properties the producer
set. A worker that opens it uses the inside copy: outer headers the producer did
not set pass only when their names start with ``x-`` (what transports and the
worker add: delivery counts, dead-letter reasons). With encryption the outside
keeps only ``task`` and ``id``.

The frame (content type ``application/x-taskq-sealed``)::

    b"\\x00TQ1" | mode (b"s" signed, b"e" encrypted) | key id length (1 byte) | key id
    | nonce (12 bytes, encrypted only)
    | signed:    inner | HMAC-SHA256(sign key, everything before it) (32 bytes)
    | encrypted: AES-256-GCM(encrypt key, nonce, inner, associated data = the header)
    inner = meta length (4 bytes, big-endian) | meta (JSON) | payload

A stored result is the same frame around the serialized meta. Its leading NUL
byte is never the first byte of JSON, msgpack, pickle or YAML, so sealed and plain
data are told apart without guessing.
"""

from __future__ import annotations

import hmac
import os
import struct
from typing import Any

from taskq import serialization
from taskq.errors import ConfigurationError, SecurityError
from taskq.message import Envelope
from taskq.security.keys import Key, Keyring

__all__ = ["MAGIC", "SEALED_CONTENT_TYPE", "Sealer"]

SEALED_CONTENT_TYPE = "application/x-taskq-sealed"
MAGIC = b"\x00TQ1"
_SIGNED, _ENCRYPTED = b"s", b"e"
_MAC = 32
_NONCE = 12
_LENGTH = struct.Struct(">I")
#: Outer headers kept on an encrypted message.
_VISIBLE = ("task", "id")
#: Properties the frame carries (what a message uses; priority is the transport's).
_PROPERTIES = ("correlation_id", "reply_to")


class Sealer:
    """Seals and opens task messages and results for one app's settings.

    Args:
        keyring: the keys (see ``taskq.security.keys``).
        encrypt: encrypt task messages, not only sign them.
        encrypt_results: encrypt stored results, not only sign them.
        accept_unsigned: also accept plain messages and results (a roll-out).
    """

    def __init__(
        self,
        keyring: Keyring,
        *,
        encrypt: bool = False,
        encrypt_results: bool = False,
        accept_unsigned: bool = False,
    ) -> None:
        self.keyring = keyring
        self.encrypt = encrypt
        self.encrypt_results = encrypt_results
        self.accept_unsigned = accept_unsigned
        self._ciphers: dict[str, Any] = {}
        if encrypt or encrypt_results:
            self._cipher(keyring.current)  # a missing extra fails at start-up

    # -- task messages -----------------------------------------------------------------

    def seal(self, envelope: Envelope) -> Envelope:
        """``envelope`` signed (or encrypted) with the current key."""
        meta = {
            "t": envelope.content_type,
            "e": envelope.content_encoding,
            "h": envelope.headers,
            "p": {k: envelope.properties[k] for k in _PROPERTIES if k in envelope.properties},
        }
        body = self._frame(meta, envelope.body, self.encrypt)
        headers = envelope.headers
        if self.encrypt:
            headers = {k: headers[k] for k in _VISIBLE if k in headers}
        return Envelope(body, SEALED_CONTENT_TYPE, "binary", headers, envelope.properties)

    def open(self, envelope: Envelope) -> Envelope:
        """The envelope the producer sealed, with the transport's ``x-`` headers.

        Raises:
            SecurityError: not sealed (unless ``accept_unsigned``), sealed with an
                unknown key, or altered.
        """
        if envelope.content_type != SEALED_CONTENT_TYPE:
            if self.accept_unsigned:
                return envelope
            raise SecurityError(
                f"message is not signed (content type {envelope.content_type!r}) and "
                "security_keys is set, so only signed messages run. It came from a "
                "producer without the keys or from a direct write to the broker; during a "
                "roll-out set security_accept_unsigned=True."
            )
        meta, body = self._unframe(envelope.body, "message")
        headers, properties, content_type = meta.get("h"), meta.get("p"), meta.get("t")
        if not (isinstance(headers, dict) and isinstance(properties, dict)):
            raise SecurityError("sealed message has no headers or properties inside")
        if not isinstance(content_type, str):
            raise SecurityError("sealed message has no content type inside")
        outer = envelope.headers
        # Set arithmetic first: usually no outer header is missing from the signed ones.
        added = {k: outer[k] for k in outer.keys() - headers.keys() if k.startswith("x-")}
        return Envelope(
            body,
            content_type,
            str(meta.get("e") or "utf-8"),
            {**headers, **added} if added else headers,
            {**envelope.properties, **properties},
        )

    # -- results -----------------------------------------------------------------------

    def seal_result(self, data: bytes, content_type: str, encoding: str) -> bytes:
        """Stored result bytes, signed (or encrypted) with the current key."""
        return self._frame({"t": content_type, "e": encoding}, data, self.encrypt_results)

    def open_result(self, data: bytes) -> tuple[bytes, str | None, str | None]:
        """``(data, content type, encoding)`` of a stored result; the type is None for
        plain data (accepted only with ``accept_unsigned``).

        Raises:
            SecurityError: not sealed (unless ``accept_unsigned``), sealed with an
                unknown key, or altered.
        """
        if not data.startswith(MAGIC):
            if self.accept_unsigned:
                return data, None, None
            raise SecurityError(
                "stored result is not signed and security_keys is set: it was written by "
                "a worker without the keys or forged in the result backend. Refused."
            )
        meta, body = self._unframe(data, "result")
        content_type = meta.get("t")
        if not isinstance(content_type, str):
            raise SecurityError("sealed result has no content type inside")
        return body, content_type, str(meta.get("e") or "utf-8")

    # -- the frame ---------------------------------------------------------------------

    def _frame(self, meta: dict[str, Any], payload: bytes, encrypt: bool) -> bytes:
        key = self.keyring.current
        packed = serialization.json_dumps(meta)
        inner = _LENGTH.pack(len(packed)) + packed + payload
        kid = key.id.encode("ascii")
        if encrypt:
            nonce = os.urandom(_NONCE)
            header = MAGIC + _ENCRYPTED + bytes([len(kid)]) + kid + nonce
            return header + bytes(self._cipher(key).encrypt(nonce, inner, header))
        header = MAGIC + _SIGNED + bytes([len(kid)]) + kid
        signed = header + inner
        return signed + hmac.digest(key.sign, signed, "sha256")

    def _unframe(self, data: bytes, what: str) -> tuple[dict[str, Any], bytes]:
        if not isinstance(data, bytes) or len(data) < 7 or not data.startswith(MAGIC):
            raise SecurityError(f"sealed {what} is not a taskq frame")
        mode, size = data[4:5], data[5]
        kid = data[6 : 6 + size].decode("ascii", "replace")
        key = self.keyring.keys.get(kid)
        if key is None:
            raise SecurityError(
                f"{what} is sealed with key {kid!r}, which this process does not have "
                f"(security_keys: {', '.join(sorted(self.keyring.keys))}). Add that key, or "
                "it was forged."
            )
        start = 6 + size
        if mode == _SIGNED:
            inner = data[start:-_MAC]
            expected = hmac.digest(key.sign, data[:-_MAC], "sha256")
            if len(data) < start + _MAC or not hmac.compare_digest(expected, data[-_MAC:]):
                raise SecurityError(
                    f"{what} signature does not match key {kid!r}: it was altered or forged"
                )
        elif mode == _ENCRYPTED:
            nonce = data[start : start + _NONCE]
            inner = self._decrypt(key, nonce, data[start + _NONCE :], data[: start + _NONCE], what)
        else:
            raise SecurityError(f"sealed {what} has unknown mode {mode!r}")
        return _split(inner, what)

    def _decrypt(self, key: Key, nonce: bytes, sealed: bytes, header: bytes, what: str) -> bytes:
        try:
            cipher = self._cipher(key)
        except ConfigurationError as exc:  # this process cannot open it; it is kept
            raise SecurityError(f"{what} is encrypted: {exc}") from exc
        from cryptography.exceptions import InvalidTag

        try:
            return bytes(cipher.decrypt(nonce, sealed, header))
        except (InvalidTag, ValueError) as exc:
            raise SecurityError(
                f"{what} does not decrypt with key {key.id!r}: it was altered or forged"
            ) from exc

    def _cipher(self, key: Key) -> Any:
        cipher = self._ciphers.get(key.id)
        if cipher is None:
            try:
                from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            except ImportError as exc:
                raise ConfigurationError(
                    "Encryption (security_encrypt, security_encrypt_results, or an encrypted "
                    "message received) needs the cryptography package: pip install "
                    f"'taskq[security]'. ({exc})"
                ) from exc
            cipher = self._ciphers[key.id] = AESGCM(key.encrypt)
        return cipher


def _split(inner: bytes, what: str) -> tuple[dict[str, Any], bytes]:
    if len(inner) < _LENGTH.size:
        raise SecurityError(f"sealed {what} is truncated")
    (size,) = _LENGTH.unpack_from(inner)
    end = _LENGTH.size + size
    try:
        meta = serialization.json_loads(inner[_LENGTH.size : end])
    except ValueError as exc:
        raise SecurityError(f"sealed {what} has an unreadable inside: {exc}") from exc
    if not isinstance(meta, dict) or end > len(inner):
        raise SecurityError(f"sealed {what} has an unreadable inside")
    return meta, inner[end:]
