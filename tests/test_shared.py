"""``shared_task`` and ``autodiscover_tasks``: how a reusable module's tasks reach the
project's app without importing it (as with Celery)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq import App, ConfigurationError, shared, shared_task
from taskq.loader import TaskModuleError, import_task_modules


def eager_app(name: str, **settings: object) -> App:
    return App(name, broker="memory://", backend="memory://", task_always_eager=True, **settings)


@shared_task
def double(x: int) -> int:
    return 2 * x


def test_a_shared_task_defined_before_the_app_is_registered_on_it() -> None:
    app = eager_app("early")
    assert app.tasks["tests.test_shared.double"].fn is double.__wrapped__
    assert double.delay(21).get() == 42
    assert double(4) == 8  # calling it runs the function here


def test_a_shared_task_defined_after_the_app_and_the_current_app() -> None:
    first = eager_app("first")
    second = eager_app("second", set_as_current=False)

    @shared_task(name="later.triple")
    def triple(x: int) -> int:
        return 3 * x

    assert "later.triple" in first.tasks and "later.triple" in second.tasks
    assert triple.app is first  # the second app did not make itself current
    second.set_current()
    assert triple.app is second
    assert triple.name == "later.triple"
    assert triple.delay(3).get() == 9


def test_bound_shared_task_gets_its_task(monkeypatch: pytest.MonkeyPatch) -> None:
    eager_app("bound")

    @shared_task(bind=True, name="later.whoami")
    def whoami(self: object) -> str:
        return str(getattr(self, "name", None))

    assert whoami.delay().get() == "later.whoami"


def test_using_a_shared_task_with_no_app_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "_current", None)
    with pytest.raises(ConfigurationError, match="before any taskq App was made"):
        double.delay(1)


@pytest.fixture
def packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path where the test writes packages."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("disco_"):
            del sys.modules[name]


def write(root: Path, files: dict[str, str]) -> None:
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))


def test_autodiscovery_imports_each_packages_tasks_module_at_worker_start(packages: Path) -> None:
    write(
        packages,
        {
            "disco_billing/__init__.py": "",
            "disco_billing/tasks.py": """
                from taskq import shared_task

                @shared_task
                def invoice(n):
                    return n
            """,
            "disco_plain/__init__.py": "",  # no tasks module: skipped
        },
    )
    app = eager_app("disco")
    app.autodiscover_tasks(lambda: ["disco_billing", "disco_plain"])
    assert "disco_billing.tasks.invoice" not in app.tasks  # lazy, as Celery's
    assert import_task_modules(app) == ["disco_billing.tasks"]
    assert "disco_billing.tasks.invoice" in app.tasks


def test_autodiscovery_force_and_a_broken_tasks_module(packages: Path) -> None:
    write(
        packages,
        {
            "disco_now/__init__.py": "",
            "disco_now/tasks.py": "from taskq import shared_task\nshared_task(lambda: 1)\n",
            "disco_broken/__init__.py": "",
            "disco_broken/tasks.py": "import no_such_module_here\n",
        },
    )
    app = eager_app("force")
    app.autodiscover_tasks(["disco_now"], force=True)
    assert "disco_now.tasks" in sys.modules
    app.autodiscover_tasks(["disco_broken"])
    with pytest.raises(TaskModuleError, match="'disco_broken.tasks'") as caught:
        import_task_modules(app)
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


def test_autodiscovery_without_packages_needs_django(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    app = eager_app("nodjango")
    app.autodiscover_tasks()
    with pytest.raises(ConfigurationError, match="set DJANGO_SETTINGS_MODULE"):
        import_task_modules(app)
