"""Typed settings with Celery's lowercase names, loud on mistakes.

``Settings`` holds every option the app, worker and beat read, as typed fields.
Celery's other setting names are accepted too: their values are kept, and the
worker and beat warn at start about each one taskq will not honour
(``unimplemented``; the reasons are in ``taskq.celery_names``). Celery's old
uppercase names (``CELERY_ALWAYS_EAGER``, ``BROKER_URL``) are read through Celery's
own table. A name neither Celery nor taskq knows raises ``ConfigurationError``
with a did-you-mean; values are checked against the field's type when set.
Durations accept seconds (int or float) or a ``timedelta`` and are stored as float
seconds.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from taskq.celery_names import CELERY_NAMES, GAPS, OLD_NAMES
from taskq.errors import ConfigurationError, did_you_mean
from taskq.queues import check_task_queues

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
        "event_queue_ttl",
        "event_queue_expires",
        "control_queue_ttl",
        "control_queue_expires",
        "worker_heartbeat_interval",
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
    # Connections a producer may hold to a Redis broker (None or 0: no cap).
    broker_pool_limit: int | None = 10
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
    # Queues: how every process declares them (taskq.queues), Celery's names and defaults.
    task_queues: list[Any] | dict[str, Any] | None = None
    task_create_missing_queues: bool = True
    task_create_missing_queue_type: str = "classic"
    task_create_missing_queue_exchange_type: str | None = None
    task_default_exchange: str | None = None
    task_default_exchange_type: str = "direct"
    task_default_routing_key: str | None = None
    task_default_queue_type: str = "classic"
    # taskq's: publish countdown/ETA tasks to their queue at once, as Celery does, so
    # Celery workers on Redis get them (docs/delayed.md, "Mixed fleets").
    task_eta_in_queue: bool = False
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
    # Monitoring and remote control (docs/monitoring.md), Celery's names and defaults.
    worker_send_task_events: bool = False
    worker_enable_remote_control: bool = True
    # Seconds between worker-heartbeat events (Celery's --heartbeat-interval); taskq's.
    worker_heartbeat_interval: float = 2.0
    # Prometheus metrics of this worker at http://<host>:<port>/metrics (taskq's;
    # None: off). Needs the extra taskq[metrics]. docs/monitoring.md.
    worker_metrics_port: int | None = None
    worker_metrics_host: str = "127.0.0.1"
    task_send_sent_event: bool = False
    event_exchange: str = "celeryev"
    event_queue_prefix: str = "celeryev"
    event_queue_ttl: float = 5.0
    event_queue_expires: float = 60.0
    control_exchange: str = "celery"
    control_queue_ttl: float = 300.0
    control_queue_expires: float = 10.0
    # Dashboard (taskq dashboard): tasks kept in memory, the oldest forgotten first.
    dashboard_max_tasks: int = 10_000
    # Beat
    beat_schedule: dict[str, Any] = dataclasses.field(default_factory=dict)
    beat_max_loop_interval: float = 5.0
    # 25 s lease + at most one 5 s standby tick: another beat takes over within 30 s.
    beat_lease_timeout: float = 25.0
    # Modules the worker imports at start (Celery's ``imports`` / ``include``).
    imports: list[str] = dataclasses.field(default_factory=list)
    include: list[str] = dataclasses.field(default_factory=list)

    if TYPE_CHECKING:  # set in __post_init__, not a dataclass field
        _celery_only: ClassVar[dict[str, Any]]

    def __post_init__(self) -> None:
        # Values of Celery settings taskq has no field for (celery_names.GAPS).
        object.__setattr__(self, "_celery_only", {})

    def __setattr__(self, name: str, value: Any) -> None:
        self.update({name: value})

    if not TYPE_CHECKING:  # at run time only: mypy keeps rejecting unknown attributes

        def __getattr__(self, name: str) -> Any:
            """A Celery setting taskq does not implement reads as set (or None)."""
            if name in GAPS:
                return self._celery_only.get(name)
            raise AttributeError(name)

    def __getitem__(self, name: str) -> Any:
        """``conf["task_acks_late"]``, as Celery's settings read; old names too."""
        name = _resolve(name)
        return getattr(self, name) if name in _FIELDS else self._celery_only.get(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.update({name: value})

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (
            name in _FIELDS or name in self._celery_only or OLD_NAMES.get(name) in _FIELDS
        )

    def get(self, name: str, default: Any = None) -> Any:
        """The value of setting ``name`` (old names too), or ``default`` if it is a
        Celery setting taskq does not implement that was never set."""
        name = _resolve(name)
        if name in _FIELDS:
            return getattr(self, name)
        return self._celery_only.get(name, default)

    def update(self, mapping: Mapping[str, Any] | None = None, /, **values: Any) -> None:
        """Set several settings; every name is checked before any is applied.

        Names may be Celery's old uppercase ones; giving one setting under two names
        with different values is an error.
        """
        resolved: dict[str, tuple[str, Any]] = {}
        for given, value in {**(mapping or {}), **values}.items():
            name = _resolve(given)
            if name in resolved and resolved[name][1] != value:
                other = resolved[name][0]
                raise ConfigurationError(
                    f"Setting {name!r} is given twice, as {other!r} and as {given!r}: "
                    "keep one (the lowercase name is the current one)."
                )
            resolved[name] = (given, value)
        checked = {name: _check(name, value) for name, (_, value) in resolved.items()}
        for name, value in checked.items():
            if name in _FIELDS:
                object.__setattr__(self, name, value)
            else:
                self._celery_only[name] = value

    def unimplemented(self) -> list[str]:
        """One line for each Celery setting given a value taskq will not honour: its
        name, the value and why (the worker and beat log these at start)."""
        lines = []
        for name, value in sorted(self._celery_only.items()):
            gap = GAPS[name]
            if not any(value == same and type(value) is type(same) for same in gap.same):
                lines.append(
                    f"Setting {name}={value!r} is Celery's; taskq does not implement it: "
                    f"{gap.reason}."
                )
        return lines

    def apply_env(self, environ: Mapping[str, str] = os.environ) -> None:
        """Apply ``TASKQ_BROKER_URL``, ``TASKQ_RESULT_BACKEND`` and
        ``TASKQ_EMBEDDED_PATH`` when set."""
        for var, name in ENV_OVERRIDES.items():
            if environ.get(var):
                setattr(self, name, environ[var])

    def from_object(self, obj: object | str, namespace: str | None = None) -> None:
        """Load settings from an object, a module, or ``"module:attribute"``
        (``"django.conf:settings"``), as Celery's ``config_from_object``.

        Without ``namespace``: the lowercase public attributes, and Celery's old
        uppercase names (``CELERY_ALWAYS_EAGER``); other uppercase names are ignored.
        With ``namespace="CELERY"``: the attributes named ``CELERY_<NAME>``, read as
        setting ``<name>`` (``CELERY_BROKER_URL`` is ``broker_url``).

        Raises:
            ConfigurationError: the module cannot be imported, or a name is not a
                setting (with a did-you-mean).
        """
        if isinstance(obj, str):
            obj = _import_object(obj)
        names = [name for name in dir(obj) if not name.startswith("_")]
        if namespace:
            prefix = namespace.rstrip("_").upper() + "_"
            values = {
                _unprefixed(name, prefix): getattr(obj, name)
                for name in names
                if name.startswith(prefix)
            }
        else:
            values = {
                name: getattr(obj, name)
                for name in names
                if _wanted_without_namespace(name) and not _is_module_noise(obj, name)
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


def _import_object(spec: str) -> object:
    """``"module"``, ``"module:attribute"`` or ``"module.attribute"``, imported."""
    module_name, _, attribute = spec.partition(":")
    try:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            parent, _, last = module_name.rpartition(".")
            if attribute or not parent:
                raise
            module, attribute = importlib.import_module(parent), last
            if not hasattr(module, attribute):
                raise
    except ImportError as exc:
        raise ConfigurationError(
            f"Cannot import configuration module {spec!r}: {exc}. "
            "Check the name and that it is on sys.path."
        ) from exc
    if not attribute:
        return module
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(
            f"Configuration {spec!r}: module {module_name!r} has no attribute {attribute!r}."
        ) from None


def _unprefixed(name: str, prefix: str) -> str:
    """The setting a namespaced name stands for: ``CELERY_BROKER_URL`` -> ``broker_url``;
    an old name written with the namespace (``CELERY_ALWAYS_EAGER``) reads as Celery reads it."""
    bare = name[len(prefix) :].lower()
    if bare not in _FIELDS and bare not in CELERY_NAMES and name in OLD_NAMES:
        return OLD_NAMES[name]
    return bare


def _wanted_without_namespace(name: str) -> bool:
    if name.islower():
        return True
    if name in OLD_NAMES:
        return True
    bare = name.partition("_")[2].lower()
    if name.startswith("CELERY_") and (bare in _FIELDS or bare in CELERY_NAMES):
        raise ConfigurationError(
            f"{name!r} is a namespaced name, but no namespace was given: call "
            f"config_from_object(..., namespace='CELERY'), or name it {bare!r}."
        )
    return False


def _is_module_noise(obj: object, name: str) -> bool:
    """Skip imported modules, functions and classes in a config module."""
    value = getattr(obj, name)
    return inspect.ismodule(value) or inspect.isfunction(value) or inspect.isclass(value)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _resolve(name: str) -> str:
    """The lowercase name of setting ``name`` (Celery's old names mapped).

    Raises:
        ConfigurationError: neither taskq nor Celery has such a setting.
    """
    if name in _FIELDS or name in GAPS:
        return name
    new = OLD_NAMES.get(name)
    if new is not None:
        return new
    if name.isupper():
        hint = did_you_mean(name, OLD_NAMES) or did_you_mean(name.lower(), _FIELDS)
    else:
        hint = did_you_mean(name, [*_FIELDS, *CELERY_NAMES])
    raise ConfigurationError(
        f"Unknown setting {name!r}.{hint} Neither taskq nor Celery has it; "
        "see docs/configuration.md for the list."
    )


def _check(name: str, value: Any) -> Any:
    if name not in _FIELDS:
        return value  # a Celery setting taskq does not implement: kept as given
    if name == "task_queues":
        return check_task_queues(value)
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
    if name == "dashboard_max_tasks" and value < 1:
        raise ConfigurationError(f"dashboard_max_tasks must be >= 1, got {value!r}.")
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
