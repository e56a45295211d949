"""Where the dashboard listens and who may use it.

Safe by default: it listens on 127.0.0.1, and refuses any other address unless a
token or a user and password is set, because the dashboard can revoke tasks,
shut workers down and purge the dead-letter queue.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from taskq.errors import ConfigurationError

#: Environment variables the secrets can come from (a command line shows in ``ps``).
TOKEN_ENV = "TASKQ_DASHBOARD_TOKEN"
BASIC_AUTH_ENV = "TASKQ_DASHBOARD_BASIC_AUTH"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_basic_auth(text: str) -> tuple[str, str]:
    """``"user:password"`` -> ``("user", "password")``.

    Raises:
        ConfigurationError: no colon, or an empty user or password.
    """
    user, colon, password = text.partition(":")
    if not colon or not user or not password:
        raise ConfigurationError(
            "--basic-auth must be USER:PASSWORD with both parts non-empty (or set "
            f"{BASIC_AUTH_ENV}), got a value without them."
        )
    return user, password


@dataclasses.dataclass(frozen=True)
class DashboardOptions:
    """How ``taskq dashboard`` runs.

    Attributes:
        host: the address to listen on.
        port: the TCP port.
        token: when set, every request must carry it (``Authorization: Bearer``,
            or ``?token=`` once, which sets a cookie).
        basic_auth: when set, ``(user, password)`` for HTTP basic authentication.
        max_tasks: tasks kept in memory (None: the app's ``dashboard_max_tasks``).
        poll_interval: seconds between reads of queue depths and worker stats.
    """

    host: str = "127.0.0.1"
    port: int = 5555
    token: str | None = dataclasses.field(default=None, repr=False)
    basic_auth: tuple[str, str] | None = dataclasses.field(default=None, repr=False)
    max_tasks: int | None = None
    poll_interval: float = 2.0

    @property
    def authenticated(self) -> bool:
        return bool(self.token or self.basic_auth)

    def check(self) -> None:
        """Refuse settings that would expose the dashboard to anyone.

        Raises:
            ConfigurationError: a non-loopback host without authentication, both
                kinds of authentication at once, or a bad port.
        """
        if not 0 < self.port < 65536:
            raise ConfigurationError(f"--port must be 1-65535, got {self.port}.")
        if self.token is not None and not self.token:
            raise ConfigurationError("--token must not be empty.")
        if self.token and self.basic_auth:
            raise ConfigurationError("Give --token or --basic-auth, not both.")
        if not is_loopback(self.host) and not self.authenticated:
            raise ConfigurationError(
                f"Refusing to listen on {self.host!r} without authentication: anyone who "
                "reaches that address could revoke tasks, shut workers down and purge the "
                f"dead-letter queue. Set a token (--token or {TOKEN_ENV}) or a user and "
                f"password (--basic-auth USER:PASSWORD or {BASIC_AUTH_ENV}), or listen on "
                "127.0.0.1 (the default) and reach it through an SSH tunnel."
            )
