"""``app.autodiscover_tasks``: the packages whose ``tasks`` module holds tasks.

Discovery is lazy, as Celery's: ``App.autodiscover_tasks`` records the packages,
and a worker imports their modules at start (``taskq.loader``), when the packages
(Django's installed apps, say) are ready to import. ``force=True`` imports at once.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence

from taskq.integrations import django as django_integration

__all__ = ["Autodiscovery"]

Packages = Sequence[str] | Callable[[], Sequence[str]] | None


@dataclasses.dataclass(frozen=True)
class Autodiscovery:
    """One ``app.autodiscover_tasks(packages, related_name)`` call.

    Attributes:
        packages: package names, a callable returning them (Celery's
            ``lambda: settings.INSTALLED_APPS``), or None for Django's installed apps.
        related_name: the module to look for in each package (None: the package).
    """

    packages: Packages = None
    related_name: str | None = "tasks"

    def modules(self) -> list[str]:
        """The candidate modules, ``<package>.<related_name>`` for each package."""
        found = self.packages() if callable(self.packages) else self.packages
        names = django_integration.installed_apps() if found is None else list(found)
        if not self.related_name:
            return names
        return [f"{name}.{self.related_name}" for name in names]

    def import_now(self) -> None:
        """Import the modules that exist (``autodiscover_tasks(force=True)``)."""
        for name in self.modules():
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:
                    raise
