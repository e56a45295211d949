"""Which modules hold an app's tasks, and importing them when a worker starts.

A worker imports, in order: ``imports``, ``include``, then the ``tasks`` module of
each package given to ``app.autodiscover_tasks`` (Celery's related name; a package
without one is skipped, as Celery skips it). ``autodiscover_tasks()`` without
packages means the installed Django apps, with Django set up first. Discovery is
lazy, as Celery's: it runs here, at worker start, not when the app is made (the
packages may not be importable yet then), unless ``force=True``.

A task module that fails to import stops start-up: ``TaskModuleError`` names it and
carries the original exception (the CLI prints its traceback).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from taskq import signals
from taskq.errors import ConfigurationError
from taskq.integrations import django as django_integration

if TYPE_CHECKING:
    from taskq.app import App

__all__ = ["TaskModuleError", "import_task_modules", "task_modules"]


class TaskModuleError(ConfigurationError):
    """A task module failed to import; ``__cause__`` is why."""

    def __init__(self, module: str, exc: BaseException) -> None:
        super().__init__(f"Could not import task module {module!r}: {exc!r}")
        self.module = module


def task_modules(app: App) -> list[tuple[str, bool]]:
    """``(module, optional)`` for every module to import, in order, without duplicates:
    ``imports`` and ``include`` (required), then autodiscovered ones (optional: a
    package need not have a tasks module)."""
    seen: dict[str, bool] = {}
    for name in [*app.conf.imports, *app.conf.include]:
        seen.setdefault(name, False)
    for discovery in app.autodiscovery:
        for name in discovery.modules():
            seen.setdefault(name, True)
    return list(seen.items())


def import_task_modules(app: App) -> list[str]:
    """Import the app's task modules (see the module docstring); return those imported.

    With Django in use (``DJANGO_SETTINGS_MODULE`` set), Django is set up first (its
    connections closed, so forked children inherit none) and connections that broke
    or passed ``CONN_MAX_AGE`` are closed around each task, as Celery's Django fixup
    does.

    Raises:
        TaskModuleError: a module failed to import (or a package to autodiscover).
    """
    if django_integration.in_use():
        django_integration.setup()
        # Django's request cycle closes broken connections and those past
        # CONN_MAX_AGE around each request; a worker has no requests: around each task.
        signals.task_prerun.connect(_close_old_connections)
        signals.task_postrun.connect(_close_old_connections)
    imported = []
    for name, optional in task_modules(app):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if optional and exc.name == name:  # the package has no tasks module
                continue
            raise TaskModuleError(name, exc) from exc
        except Exception as exc:
            raise TaskModuleError(name, exc) from exc
        imported.append(name)
    return imported


def _close_old_connections(sender: Any = None, **_: Any) -> None:
    django_integration.close_old_connections()
