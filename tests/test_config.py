from __future__ import annotations

import types
from datetime import timedelta
from pathlib import Path

import pytest

from taskq import App, ConfigurationError
from taskq.config import Settings


def test_unknown_setting_suggests_the_right_name() -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'task_default_queue'"):
        App("t", task_defualt_queue="x")


def test_update_checks_every_name_before_applying_any() -> None:
    conf = Settings()
    with pytest.raises(ConfigurationError, match="broker_ulr"):
        conf.update(task_default_queue="new", broker_ulr="redis://")
    assert conf.task_default_queue == "celery"


def test_attribute_access_and_assignment_are_checked() -> None:
    app = App("t")
    app.conf.task_default_queue = "jobs"
    assert app.conf.task_default_queue == "jobs"
    with pytest.raises(ConfigurationError, match="must be True or False"):
        app.conf.task_acks_late = "yes"
    with pytest.raises(ConfigurationError, match="Unknown setting 'task_acks_lte'"):
        app.conf.task_acks_lte = True


def test_durations_accept_seconds_or_timedelta() -> None:
    conf = Settings()
    conf.update(result_expires=timedelta(hours=2), task_time_limit=30)
    assert conf.result_expires == 7200.0
    assert conf.task_time_limit == 30.0
    with pytest.raises(ConfigurationError, match="seconds or a timedelta"):
        conf.update(result_expires="1h")


def test_config_from_object_and_module_name() -> None:
    app = App("t")
    app.config_from_object(types.SimpleNamespace(task_default_queue="a", worker_concurrency=3))
    assert (app.conf.task_default_queue, app.conf.worker_concurrency) == ("a", 3)
    app.config_from_object("tests.sample_config")
    assert app.conf.task_serializer == "json"
    assert app.conf.task_routes == {"tests.*": {"queue": "tests"}}


def test_config_from_missing_module_is_a_clear_error() -> None:
    with pytest.raises(
        ConfigurationError, match="Cannot import configuration module 'no_such_mod'"
    ):
        App("t").config_from_object("no_such_mod")


def test_environment_overrides_broker_and_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKQ_BROKER_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("TASKQ_RESULT_BACKEND", "redis://127.0.0.1:6379/4")
    app = App("t", broker="amqp://", backend="memory://")
    assert app.broker_url == "redis://127.0.0.1:6379/3"
    assert app.backend_url == "redis://127.0.0.1:6379/4"


def test_embedded_default_when_nothing_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKQ_BROKER_URL", raising=False)
    monkeypatch.delenv("TASKQ_RESULT_BACKEND", raising=False)
    app = App("t")
    beside_this_module = f"sqlite:///{Path(__file__).parent / 'taskq.sqlite3'}"
    assert app.broker_url == beside_this_module
    assert app.backend_url == beside_this_module


def test_configured_broker_without_backend_disables_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TASKQ_RESULT_BACKEND", raising=False)
    app = App("t", broker="memory://")
    assert app.backend is None
    with pytest.raises(ConfigurationError, match="No result backend is configured"):
        app.AsyncResult("x").get(timeout=0)


def test_unknown_broker_scheme_lists_known_ones() -> None:
    app = App("t", broker="reddis://localhost")
    with pytest.raises(ConfigurationError, match="Did you mean 'redis'.*Known schemes"):
        _ = app.broker


def test_unknown_task_option_is_refused() -> None:
    app = App("t", broker="memory://")
    with pytest.raises(ConfigurationError, match="Did you mean 'max_retries'"):
        app.task(max_retires=3)
