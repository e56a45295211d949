"""Signing and encryption of task messages and results (issue 12).

Off by default. With ``security_keys`` set, every task message a producer sends
and every result a worker stores is sealed (``taskq.security.seal``): signed with
HMAC-SHA256, and with ``security_encrypt`` / ``security_encrypt_results`` also
encrypted with AES-256-GCM (the ``cryptography`` package: ``pip install
'taskq[security]'``). Workers dead-letter messages that are not sealed by a trusted
key, with the reason, and ``AsyncResult`` refuses results that are not. The threat
model, and how this compares with Celery's ``auth`` serializer: docs/security.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskq.security.keys import Key, Keyring
from taskq.security.seal import SEALED_CONTENT_TYPE, Sealer

if TYPE_CHECKING:
    from taskq.config import Settings

__all__ = ["SEALED_CONTENT_TYPE", "Key", "Keyring", "Sealer", "Security", "sealer_from_settings"]


def sealer_from_settings(conf: Settings) -> Sealer | None:
    """The sealer the settings ask for, or None when ``security_keys`` is empty.

    Raises:
        ConfigurationError: the keys are unusable, or encryption is asked for
            without the ``cryptography`` package.
    """
    if not conf.security_keys:
        return None
    return Sealer(
        Keyring.from_settings(conf.security_keys, conf.security_key_id),
        encrypt=conf.security_encrypt,
        encrypt_results=conf.security_encrypt_results,
        accept_unsigned=conf.security_accept_unsigned,
    )


class Security:
    """An app's sealer, built from its settings on first use, so settings changed
    before then (``config_from_object`` after the tasks were declared) still apply.
    The app makes one and hands it to its producer and result store.
    """

    def __init__(self, conf: Settings) -> None:
        self.conf = conf
        self._built: tuple[Sealer | None] | None = None

    @property
    def sealer(self) -> Sealer | None:
        """The sealer, or None when ``security_keys`` is empty.

        Raises:
            ConfigurationError: see ``sealer_from_settings``.
        """
        if self._built is None:
            self._built = (sealer_from_settings(self.conf),)
        return self._built[0]
