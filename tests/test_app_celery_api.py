"""The parts of Celery's app API a project's code touches, on taskq's App."""

from __future__ import annotations

from datetime import timezone
from typing import Any

import pytest

import taskq
from taskq import App, ConfigurationError
from taskq.beat import scheduler_for
from taskq.testing import test_app


def test_periodic_tasks_added_where_celerys_docs_add_them() -> None:
    app = test_app()
    add = app.task(name="api.add")(lambda x, y: x + y)

    @app.on_after_configure.connect
    def setup_periodic_tasks(sender: App, **kwargs: Any) -> None:
        sender.add_periodic_task(10.0, add.s(2, 2), name="add every 10")

    scheduler = scheduler_for(app)  # beat finalizes the app: the handler runs once
    try:
        assert list(scheduler.entries) == ["add every 10"]
    finally:
        scheduler.close()
    app.finalize()  # a second time sends nothing
    assert list(app.periodic_tasks) == ["add every 10"]
    app.close()


def test_config_from_envvar(monkeypatch: pytest.MonkeyPatch) -> None:
    app = App("env")
    monkeypatch.setenv("PROJ_CONFIG", "tests.sample_config")
    assert app.config_from_envvar("PROJ_CONFIG") is True
    assert app.conf.task_routes == {"tests.*": {"queue": "tests"}}
    assert app.config_from_envvar("NO_SUCH_VARIABLE", silent=True) is False
    with pytest.raises(ConfigurationError, match="'NO_SUCH_VARIABLE' is not set"):
        app.config_from_envvar("NO_SUCH_VARIABLE")


def test_current_task_time_and_group_results() -> None:
    app = test_app(task_always_eager=True, timezone="Europe/Paris")
    seen: list[Any] = []

    @app.task(name="api.which")
    def which() -> None:
        seen.append(app.current_task)

    which.delay()
    assert seen == [which] and app.current_task is None
    assert app.now().tzinfo == app.timezone and str(app.timezone) == "Europe/Paris"
    assert app.now().astimezone(timezone.utc).tzinfo == timezone.utc
    members = [app.AsyncResult("a"), app.AsyncResult("b")]
    assert app.GroupResult("g", members).results == members
    app.set_default()
    assert taskq.current_app.main == app.main
    app.close()


def test_celerys_top_level_names() -> None:
    for name in ("chunks", "xmap", "xstarmap", "maybe_signature", "subtask", "shared_task"):
        assert name in taskq.__all__
    app = test_app()
    add = app.task(name="api.add2")(lambda x, y: x + y)
    assert add.subtask((1, 2)) == add.s(1, 2)
    assert add.s(1).name == "api.add2" and add.s(1).subtask_type is None
    app.close()
