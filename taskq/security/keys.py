"""The keys messages and results are signed and encrypted with.

Each configured secret (``security_keys``: key id -> secret) yields two keys of its
own: one for HMAC-SHA256 signatures, one for AES-256-GCM. They are derived with
HMAC-SHA256 under fixed labels (HKDF's expand step with one block), so a
signature never reveals anything about the encryption key and one secret per
key id is all an operator manages. Several ids may be configured at once: new
messages use ``security_key_id``, and every configured id is accepted, which is
how keys are rotated (docs/security.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from taskq.errors import ConfigurationError

__all__ = ["MIN_SECRET_BYTES", "Key", "Keyring"]

#: Shortest secret accepted: 32 bytes, the strength of the keys derived from it.
MIN_SECRET_BYTES = 32
_MAX_ID = 64


@dataclasses.dataclass(frozen=True, repr=False)
class Key:
    """The keys derived from one secret. ``repr`` shows the id only."""

    id: str
    sign: bytes
    encrypt: bytes

    def __repr__(self) -> str:
        return f"<Key {self.id!r}>"

    @classmethod
    def derive(cls, key_id: str, secret: bytes) -> Key:
        def expand(label: bytes) -> bytes:
            return hmac.new(secret, label + b"\x01", hashlib.sha256).digest()

        return cls(key_id, expand(b"taskq sign v1"), expand(b"taskq encrypt v1"))


@dataclasses.dataclass(frozen=True)
class Keyring:
    """The keys this process trusts, and the one it signs with.

    Attributes:
        current: the key new messages and results are sealed with.
        keys: every trusted key by id (``current`` included).
    """

    current: Key
    keys: Mapping[str, Key]

    @classmethod
    def from_settings(cls, secrets: Mapping[str, Any], key_id: str | None) -> Keyring:
        """The keyring for ``security_keys`` and ``security_key_id``.

        Raises:
            ConfigurationError: a secret is too short or not text/bytes, an id is
                not short ASCII, or the key to sign with is ambiguous or unknown.
        """
        keys = {name: Key.derive(name, _secret(name, value)) for name, value in secrets.items()}
        for name in keys:
            if not (isinstance(name, str) and name.isascii() and 0 < len(name) <= _MAX_ID):
                raise ConfigurationError(
                    f"security_keys: key id {name!r} must be ASCII text of 1 to {_MAX_ID} "
                    "characters (it travels with every message)."
                )
        if key_id is None:
            if len(keys) != 1:
                raise ConfigurationError(
                    f"security_keys holds {len(keys)} keys ({', '.join(sorted(keys))}); set "
                    "security_key_id to the one new messages are signed with."
                )
            key_id = next(iter(keys))
        if key_id not in keys:
            raise ConfigurationError(
                f"security_key_id {key_id!r} is not in security_keys "
                f"({', '.join(sorted(keys))}). Add its secret or pick one of those."
            )
        return cls(keys[key_id], keys)


def _secret(name: str, value: Any) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes):
        raise ConfigurationError(
            f"security_keys[{name!r}] must be a string or bytes, got {type(value).__name__}."
        )
    if len(value) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"security_keys[{name!r}] is {len(value)} bytes; at least {MIN_SECRET_BYTES} are "
            'needed. Make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    return value
