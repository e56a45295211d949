"""Typed settings with Celery's lowercase names, loud on mistakes.

``Settings`` holds every option the app, worker and beat read. Unknown names raise
``ConfigurationError`` with a did-you-mean; values are checked against the field's
type when set. Durations accept seconds (int or float) or a ``timedelta`` and are
stored as float seconds.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from taskq.errors import ConfigurationError, did_you_mean

#: Environment variables that override the matching setting.
ENV_OVERRIDES = {
    "TASKQ_BROKER_URL": "broker_url",
    "TASKQ_RESULT_BACKEND": "result_backend",
    "TASKQ_EMBEDDED_PATH": "embedded_path",
}

#: When no broker is configured, broker and results share one SQLite file: this
#: name, beside the module that created the App, unless ``embedded_path`` says.
EMBEDDED_FILE = "taskq.sqlite3"

_NON_NEGATIVE = frozenset(
    {
        "broker_connection_max_retries",
        "result_backend_max_retries",
        "result_backend_base_sleep_between_retries_ms",
        "result_backend_max_sleep_between_retries_ms",
    }
)

_DURATIONS = frozenset(
    {
        "result_expires",
        "task_time_limit",
        "task_soft_time_limit",
        "worker_shutdown_timeout",
        "worker_lease_timeout",
        "broker_connection_timeout",
        "broker_publish_timeout",
        "beat_max_loop_interval",
        "beat_lease_timeout",
    }
)


@dataclasses.dataclass
class Settings:
    """Every setting taskq reads. Names and defaults follow Celery where Celery has one."""

    # Broker
    broker_url: str | None = None
    broker_transport_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    broker_connection_timeout: float | None = 4.0
    # A worker or beat started while the broker is down waits for it (Celery's names
    # and defaults; 0 or None retries forever). See broker/startup.py.
    broker_connection_retry_on_startup: bool = True
    broker_connection_max_retries: int | None = 100
    # The embedded default's SQLite file (no broker configured); relative paths are
    # relative to the folder of the module that created the App (App.place_embedded).
    embedded_path: str | None = None
    # The longest delay() blocks, retries included, whatever the server does.
    broker_publish_timeout: float = 5.0
    # Results
    result_backend: str | None = None
    result_backend_transport_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    result_expires: float | None = 86400.0
    result_serializer: str = "json"
    result_accept_content: list[str] | None = None
    result_extended: bool = False
    # Retrying a result the backend could not take (Celery's names; milliseconds as in
    # Celery, where the unit is part of the name). See backends.base.StoreRetry.
    result_backend_always_retry: bool = True
    result_backend_max_retries: int = 20
    result_backend_base_sleep_between_retries_ms: int = 10
    result_backend_max_sleep_between_retries_ms: int = 10000
    # Tasks
    task_serializer: str = "json"
    accept_content: list[str] = dataclasses.field(default_factory=lambda: ["json"])
    task_default_queue: str = "celery"
    task_default_priority: int | None = None
    task_queue_max_priority: int | None = None
    task_routes: dict[str, Any] | list[Any] | None = None
    task_acks_late: bool = True
    task_reject_on_worker_lost: bool = True
    task_track_started: bool = False
    task_ignore_result: bool = False
    task_always_eager: bool = False
    task_eager_propagates: bool = False
    task_store_eager_result: bool = False
    task_time_limit: float | None = None
    task_soft_time_limit: float | None = None
    task_default_rate_limit: str | None = None
    task_publish_retry: bool = True
    task_publish_retry_policy: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {
            "max_retries": 3,
            "interval_start": 0.0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        }
    )
    task_max_delivery_attempts: int = 5
    # Security (taskq.security, docs/security.md): key id -> secret (32+ bytes).
    security_keys: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    security_key_id: str | None = None
    security_encrypt: bool = False
    security_encrypt_results: bool = False
    security_accept_unsigned: bool = False
    # Time
    timezone: str = "UTC"
    enable_utc: bool = True
    # Worker
    worker_concurrency: int | None = None
    worker_pool: str = "prefork"
    worker_prefetch_multiplier: int = 4
    worker_max_tasks_per_child: int | None = None
    worker_max_memory_per_child: int | None = None
    worker_shutdown_timeout: float = 30.0
    # 45 s lease + at most one 15 s heartbeat of another worker: back within 60 s.
    worker_lease_timeout: float = 45.0
    worker_hostname: str | None = None
    # print() in a task goes to the log with the task's name and id (Celery's names).
    worker_redirect_stdouts: bool = True
    worker_redirect_stdouts_level: str = "WARNING"
    # Beat
    beat_schedule: dict[str, Any] = dataclasses.field(default_factory=dict)
    beat_max_loop_interval: float = 5.0
    # 25 s lease + at most one 5 s standby tick: another beat takes over within 30 s.
    beat_lease_timeout: float = 25.0
    # Modules the worker imports at start (Celery's ``imports`` / ``include``).
    imports: list[str] = dataclasses.field(default_factory=list)
    include: list[str] = dataclasses.field(default_factory=list)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, _check(name, value))

    def update(self, mapping: Mapping[str, Any] | None = None, /, **values: Any) -> None:
        """Set several settings; every name is checked before any is applied."""
        merged = {**(mapping or {}), **values}
        checked = {name: _check(name, value) for name, value in merged.items()}
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def apply_env(self, environ: Mapping[str, str] = os.environ) -> None:
        """Apply ``TASKQ_BROKER_URL``, ``TASKQ_RESULT_BACKEND`` and
        ``TASKQ_EMBEDDED_PATH`` when set."""
        for var, name in ENV_OVERRIDES.items():
            if environ.get(var):
                setattr(self, name, environ[var])

    def from_object(self, obj: object | str) -> None:
        """Load the lowercase public attributes of an object or module (by dotted name).

        Uppercase names and names starting with ``_`` are ignored, like Celery's
        ``config_from_object`` without a namespace.
        """
        if isinstance(obj, str):
            try:
                obj = importlib.import_module(obj)
            except ImportError as exc:
                raise ConfigurationError(
                    f"Cannot import configuration module {obj!r}: {exc}. "
                    "Check the name and that it is on sys.path."
                ) from exc
        values = {
            name: getattr(obj, name)
            for name in dir(obj)
            if not name.startswith("_") and name.islower() and not _is_module_noise(obj, name)
        }
        self.update(values)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def embedded_url_of(conf: Settings) -> str:
    """The SQLite URL of the embedded default: ``embedded_path``, which an App makes
    absolute (beside the module that created it, see ``App.place_embedded``)."""
    return f"sqlite:///{conf.embedded_path or EMBEDDED_FILE}"


def broker_url_of(conf: Settings) -> str:
    """The broker URL in use: the configured one or the embedded SQLite file."""
    return conf.broker_url or embedded_url_of(conf)


def backend_url_of(conf: Settings) -> str | None:
    """The result backend URL, or None when results are disabled.

    With no broker configured at all (the embedded default), results live in the
    same SQLite file as the broker.
    """
    if conf.result_backend:
        return conf.result_backend
    return embedded_url_of(conf) if not conf.broker_url else None


def _is_module_noise(obj: object, name: str) -> bool:
    """Skip imported modules, functions and classes in a config module."""
    value = getattr(obj, name)
    return inspect.ismodule(value) or inspect.isfunction(value) or inspect.isclass(value)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _check(name: str, value: Any) -> Any:
    if name not in _FIELDS:
        raise ConfigurationError(
            f"Unknown setting {name!r}.{did_you_mean(name, _FIELDS)} "
            "See docs/configuration.md for the list."
        )
    if name in _DURATIONS:
        return _duration(name, value)
    expected = _FIELDS[name].type
    if value is None:
        if "None" not in str(expected):
            raise ConfigurationError(f"Setting {name!r} cannot be None (expected {expected}).")
        return value
    kind = _kind(str(expected))
    if kind is bool and not isinstance(value, bool):
        raise ConfigurationError(f"Setting {name!r} must be True or False, got {value!r}.")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigurationError(f"Setting {name!r} must be an integer, got {value!r}.")
    if kind is str and not isinstance(value, str):
        raise ConfigurationError(f"Setting {name!r} must be a string, got {value!r}.")
    if kind is list:
        if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
            raise ConfigurationError(f"Setting {name!r} must be a list, got {value!r}.")
        return list(value)
    if (
        kind is dict
        and not isinstance(value, Mapping)
        and not (name == "task_routes" and isinstance(value, (list, tuple)))
    ):
        raise ConfigurationError(f"Setting {name!r} must be a mapping, got {value!r}.")
    if name == "worker_prefetch_multiplier" and value < 1:
        raise ConfigurationError(f"worker_prefetch_multiplier must be >= 1, got {value!r}.")
    if name in _NON_NEGATIVE and value < 0:
        raise ConfigurationError(f"Setting {name!r} must be 0 or more, got {value!r}.")
    return value


def _kind(annotation: str) -> type | None:
    head = annotation.split("|")[0].strip()
    for kind in (bool, int, str, list, dict):
        if head.startswith(kind.__name__):
            return kind
    return None


def _duration(name: str, value: Any) -> float | None:
    if value is None:
        if "None" not in str(_FIELDS[name].type):
            raise ConfigurationError(f"Setting {name!r} cannot be None: give seconds.")
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        if name == "broker_publish_timeout" and not 0 < value <= 3600:
            raise ConfigurationError(
                f"Setting 'broker_publish_timeout' must be more than 0 and at most 3600 "
                f"seconds, got {value!r}."
            )
        if name == "result_expires" and value == 0:
            return None  # Celery: 0 means results never expire
        return float(value)
    raise ConfigurationError(
        f"Setting {name!r} must be a number of seconds or a timedelta, got {value!r}."
    )
