"""Every Celery setting name is known to taskq: implemented under Celery's name, or
accepted with a start-up warning that says why not. Checked against the installed
Celery (a test dependency), so a Celery release that adds a name fails here."""

from __future__ import annotations

import types

import kombu
import pytest
from celery.app import defaults as celery_defaults

from taskq import App, ConfigurationError
from taskq.celery_names import GAPS, OLD_NAMES
from taskq.config import Settings
from taskq.queues import Queues, QueueSpec

FIELDS = set(Settings.__dataclass_fields__)


def test_every_celery_name_is_a_field_or_has_a_reason() -> None:
    unknown = sorted(n for n in celery_defaults.DEFAULTS if n not in FIELDS and n not in GAPS)
    assert not unknown, f"Celery settings taskq neither implements nor explains: {unknown}"


def test_no_implemented_setting_is_also_listed_as_missing() -> None:
    stale = sorted(name for name in GAPS if name in FIELDS)
    assert not stale, f"remove these from taskq/celery_names.py GAPS, they are fields: {stale}"
    gone = sorted(name for name in GAPS if name not in celery_defaults.DEFAULTS)
    assert not gone, f"not Celery settings (any more): {gone}"


def test_old_uppercase_names_are_celerys_table() -> None:
    assert celery_defaults._TO_NEW_KEY == OLD_NAMES


def test_celery_defaults_that_taskq_shares_are_the_same() -> None:
    conf = Settings()
    differ = {
        name: (getattr(conf, name), celery_defaults.DEFAULTS[name])
        for name in (
            "task_default_queue",
            "task_serializer",
            "result_serializer",
            "task_create_missing_queues",
            "task_default_exchange_type",
            "task_default_queue_type",
            "task_create_missing_queue_type",
            "broker_pool_limit",
            "result_extended",
            "worker_prefetch_multiplier",
            "task_track_started",
        )
        if getattr(conf, name) != celery_defaults.DEFAULTS[name]
    }
    assert not differ


def test_a_celery_setting_taskq_lacks_is_kept_and_reported() -> None:
    app = App("t", worker_hijack_root_logger=False, result_persistent=True)
    app.conf.beat_scheduler = "django_celery_beat.schedulers:DatabaseScheduler"
    assert app.conf.worker_hijack_root_logger is False
    assert app.conf["beat_scheduler"].startswith("django_celery_beat")
    lines = app.conf.unimplemented()
    assert len(lines) == 2, lines  # result_persistent=True is what taskq does anyway
    assert "beat_scheduler='django_celery_beat.schedulers:DatabaseScheduler'" in lines[0]
    assert "custom schedulers" in lines[0]
    assert lines[1].startswith("Setting worker_hijack_root_logger=False is Celery's")


def test_unknown_names_stay_errors_with_a_suggestion() -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'broker_pool_limit'"):
        App("t", broker_pool_limt=3)
    with pytest.raises(ConfigurationError, match="Did you mean 'worker_log_format'"):
        Settings().update(worker_log_fromat="x")
    with pytest.raises(ConfigurationError, match="Did you mean 'CELERY_ALWAYS_EAGER'"):
        Settings().update(CELERY_ALWAYS_EAGRE=True)


def test_old_uppercase_names_set_the_new_ones() -> None:
    app = App("t", CELERY_ALWAYS_EAGER=True, CELERYD_CONCURRENCY=3)
    app.conf.update({"BROKER_URL": "redis://127.0.0.1:6379/9"})
    app.conf["CELERY_TASK_RESULT_EXPIRES"] = 60
    assert app.conf.task_always_eager is True
    assert app.conf.worker_concurrency == 3
    assert app.conf.broker_url == "redis://127.0.0.1:6379/9"
    assert app.conf.result_expires == 60.0
    assert app.conf["CELERYD_CONCURRENCY"] == 3
    with pytest.raises(ConfigurationError, match="given twice"):
        app.conf.update(task_serializer="json", CELERY_TASK_SERIALIZER="pickle")


def test_config_from_object_with_a_namespace() -> None:
    settings = types.SimpleNamespace(
        DEBUG=True,  # not the namespace's: ignored
        CELERY_BROKER_URL="redis://127.0.0.1:6379/5",
        CELERY_TASK_TRACK_STARTED=True,
        CELERY_ALWAYS_EAGER=False,  # an old name, written in the namespace
        CELERY_WORKER_HIJACK_ROOT_LOGGER=False,
        TASKQ_WORKER_LEASE_TIMEOUT=20,
    )
    app = App("t")
    app.config_from_object(settings, namespace="CELERY")
    assert app.conf.broker_url == "redis://127.0.0.1:6379/5"
    assert app.conf.task_track_started is True
    assert app.conf.worker_hijack_root_logger is False
    assert app.conf.worker_lease_timeout == 45.0
    app.config_from_object(settings, namespace="TASKQ")
    assert app.conf.worker_lease_timeout == 20.0
    with pytest.raises(ConfigurationError, match="Did you mean 'task_track_started'"):
        app.config_from_object(
            types.SimpleNamespace(CELERY_TASK_TRACK_STARTD=1), namespace="CELERY"
        )


def test_config_from_object_without_a_namespace_reads_old_names() -> None:
    app = App("t")
    app.config_from_object(types.SimpleNamespace(BROKER_URL="memory://", DEBUG=True))
    assert app.conf.broker_url == "memory://"
    with pytest.raises(ConfigurationError, match="namespace='CELERY'"):
        app.config_from_object(types.SimpleNamespace(CELERY_BROKER_URL="memory://"))


def test_config_from_module_attribute() -> None:
    app = App("t")
    app.config_from_object("tests.test_celery_settings:DJANGO_LIKE", namespace="CELERY")
    assert app.conf.task_default_queue == "from-attribute"
    app.config_from_object("tests.test_celery_settings.DJANGO_LIKE", namespace="CELERY")
    with pytest.raises(ConfigurationError, match="has no attribute 'NOPE'"):
        app.config_from_object("tests.test_celery_settings:NOPE")


DJANGO_LIKE = types.SimpleNamespace(CELERY_TASK_DEFAULT_QUEUE="from-attribute", SECRET_KEY="x")


def test_task_queues_declare_every_queue_the_same_way() -> None:
    conf = Settings()
    conf.update(
        task_queues=[
            kombu.Queue("default", routing_key="task.#", exchange=kombu.Exchange("tasks", "topic")),
            kombu.Queue("videos", queue_arguments={"x-queue-type": "quorum"}),
        ],
        task_queue_max_priority=10,
        task_create_missing_queues=False,
    )
    queues = Queues.from_settings(conf)
    assert queues.names() == ["default", "videos"]
    default = queues["default"]
    assert (default.exchange_name, default.exchange_type, default.binding_key) == (
        "tasks",
        "topic",
        "task.#",
    )
    assert queues["videos"].queue_arguments() == {"x-queue-type": "quorum", "x-max-priority": 10}
    with pytest.raises(ConfigurationError, match="'image' is not in task_queues"):
        queues["image"]


def test_default_queue_and_missing_queues_follow_the_default_settings() -> None:
    conf = Settings()
    conf.update(
        task_default_queue="jobs",
        task_default_exchange="main",
        task_default_routing_key="jobs.default",
        task_default_queue_type="quorum",
        task_create_missing_queue_type="quorum",
    )
    queues = Queues.from_settings(conf)
    assert queues["jobs"] == QueueSpec(
        "jobs", exchange="main", routing_key="jobs.default", arguments={"x-queue-type": "quorum"}
    )
    assert queues["other"] == QueueSpec("other", arguments={"x-queue-type": "quorum"})


def test_task_queues_in_celerys_dict_form_and_bad_values() -> None:
    conf = Settings()
    conf.task_queues = {"feed": {"exchange": "feed", "routing_key": "feed.#"}}
    assert Queues.from_settings(conf)["feed"].binding_key == "feed.#"
    with pytest.raises(ConfigurationError, match="must be kombu Queue objects, got 'feed'"):
        conf.task_queues = ["feed"]
    with pytest.raises(ConfigurationError, match="unknown option 'routing_ky'"):
        conf.task_queues = {"feed": {"routing_ky": "x"}}


def test_kombu_redis_transport_options_of_a_celery_project(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from taskq.broker.redis.options import BrokerOptions

    with caplog.at_level("INFO", logger="taskq.broker"):
        options = BrokerOptions.from_mapping(
            {"lease_timeout": 45.0, "visibility_timeout": 3600, "fanout_patterns": True}
        )
    assert options.lease_timeout == 3600.0  # the project's explicit choice wins
    assert "visibility_timeout=3600 is taskq's lease_timeout" in caplog.text
    assert "fanout_patterns=True is kombu's; taskq does not use it" in caplog.text
    with pytest.raises(ConfigurationError, match="'global_keyprefix' must keep kombu's default"):
        BrokerOptions.from_mapping({"global_keyprefix": "proj:"})


def test_celerys_own_call_options_from_its_signatures() -> None:
    from taskq.routing import celery_call_options

    conf = Settings()
    conf.task_queues = [kombu.Queue("feeds", kombu.Exchange("media"), routing_key="media.feed")]
    queues = Queues.from_settings(conf)
    options = celery_call_options(
        {
            "task_id": "x",
            "interval": 1.0,
            "delivery_mode": 2,
            "stamps": {"tenant": "a"},
            "stamped_headers": ["tenant"],
            "exchange": kombu.Exchange("media"),
            "routing_key": "media.feed",
        },
        lambda: queues,
    )
    assert options == {
        "task_id": "x",
        "headers": {"stamps": {"tenant": "a"}, "stamped_headers": ["tenant"]},
        "queue": "feeds",
    }
    assert celery_call_options({"routing_key": "plain"}, lambda: queues) == {"queue": "plain"}
    assert celery_call_options({"queue": kombu.Queue("q1")}, lambda: queues) == {"queue": "q1"}
    with pytest.raises(ConfigurationError, match="does not compress"):
        celery_call_options({"compression": "zlib"}, lambda: queues)
    with pytest.raises(ConfigurationError, match="Unknown option 'interval_x'"):
        App("t", broker="memory://").send_task("x", interval_x=1)


def test_worker_and_beat_warn_at_start_about_celery_settings_taskq_ignores(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from taskq.beat import scheduler_for
    from taskq.testing import run_until_empty, test_app

    app = test_app(worker_hijack_root_logger=False, result_persistent=True)
    with caplog.at_level("WARNING"):
        run_until_empty(app)
        scheduler_for(app).close()
    warnings = [r.getMessage() for r in caplog.records if "is Celery's" in r.getMessage()]
    assert len(warnings) == 2  # the worker's and beat's; result_persistent=True is quiet
    assert all("worker_hijack_root_logger=False" in w for w in warnings)
    app.close()


def test_broker_pool_limit_caps_a_producers_redis_connections() -> None:
    app = App("pool", broker="redis://127.0.0.1:6379/0", broker_pool_limit=3)
    assert app.producer.broker.settings.max_connections == 3  # nothing connected yet
    unlimited = App("pool", broker="redis://127.0.0.1:6379/0", broker_pool_limit=None)
    assert unlimited.producer.broker.settings.max_connections is None
    own = App(
        "pool",
        broker="redis://127.0.0.1:6379/0",
        broker_transport_options={"max_connections": 7},
    )
    assert own.producer.broker.settings.max_connections == 7
