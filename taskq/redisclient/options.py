"""Options for a Redis connection, validated the same way for every user.

``RedisOptions`` holds what every Redis user in taskq accepts (timeouts, pool
size). The broker and the result backend subclass it with their own fields and
defaults; ``from_mapping`` checks any subclass's fields by their type: durations
and counts must be positive numbers (strings from a URL or the environment are
accepted), ``key_prefix`` a string.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from taskq.errors import ConfigurationError, did_you_mean

__all__ = ["RedisOptions"]

Opts = TypeVar("Opts", bound="RedisOptions")


@dataclasses.dataclass(frozen=True)
class RedisOptions:
    """Connection options; durations in seconds.

    Attributes:
        socket_timeout: seconds a Redis reply may take (None: forever).
        socket_connect_timeout: seconds a connection attempt may take (None: forever).
        max_connections: cap on pooled connections (None: no cap); threads beyond it
            wait up to ``socket_timeout`` for a free one.
    """

    socket_timeout: float | None = 30.0
    socket_connect_timeout: float | None = 5.0
    max_connections: int | None = None

    #: How error messages name these options ("Redis broker option").
    what: ClassVar[str] = "Redis option"
    #: Options that may be 0 (the feature is off).
    may_be_zero: ClassVar[frozenset[str]] = frozenset()
    #: The smallest ``max_connections`` that works for this user, and why.
    min_connections: ClassVar[int] = 1
    min_connections_reason: ClassVar[str] = ""

    @classmethod
    def from_mapping(cls: type[Opts], options: Mapping[str, Any]) -> Opts:
        """Validated options.

        Raises:
            ConfigurationError: an unknown option or a value of the wrong kind,
                naming the option, the value and what it must be.
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, value in options.items():
            if name not in known:
                raise ConfigurationError(
                    f"Unknown {cls.what} {name!r}.{did_you_mean(name, known)} "
                    f"Known: {', '.join(known)}."
                )
            values[name] = cls._checked(name, value, str(known[name].type))
        return cls(**values)

    @classmethod
    def _checked(cls, name: str, value: Any, annotation: str) -> Any:
        if annotation.startswith("str"):
            if not isinstance(value, str):
                raise ConfigurationError(f"{cls.what} {name}={value!r} must be a string.")
            return value
        if value is None and "None" in annotation:
            return None
        if annotation.startswith("int"):
            number = _number(value, int)
            if number is None or number < cls.min_connections:
                raise ConfigurationError(
                    f"{cls.what} {name}={value!r} must be an integer of at least "
                    f"{cls.min_connections}{cls.min_connections_reason}."
                )
            return number
        number = _number(value, float)
        if name in cls.may_be_zero:
            if number is None or not number >= 0:  # also rejects NaN
                raise ConfigurationError(
                    f"{cls.what} {name}={value!r} must be a number of seconds, 0 or more "
                    "(0 turns it off)."
                )
        elif number is None or not number > 0:  # also rejects NaN
            raise ConfigurationError(
                f"{cls.what} {name}={value!r} must be a positive number of seconds."
            )
        return number


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    if isinstance(value, bool):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        return None
