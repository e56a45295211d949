"""Django: the installed apps to autodiscover tasks in, set-up for a worker, and
its database connections, as Celery's Django fixup handles them.

Nothing here runs unless Django is used: ``App.autodiscover_tasks()`` without
packages, or a worker started with ``DJANGO_SETTINGS_MODULE`` set
(``taskq.loader.import_task_modules``). Django is the user's dependency, never
taskq's.
"""

from __future__ import annotations

import os

from taskq.errors import ConfigurationError

__all__ = ["close_old_connections", "in_use", "installed_apps", "setup"]


def in_use() -> bool:
    """Whether this process runs a Django project (``DJANGO_SETTINGS_MODULE`` is set
    and Django imports)."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return False
    try:
        import django  # noqa: F401
    except ImportError:
        return False
    return True


def installed_apps() -> list[str]:
    """The names of the installed Django apps (``django.setup()`` first, if needed).

    Raises:
        ConfigurationError: Django is not installed or not configured.
    """
    try:
        import django
        from django.apps import apps
        from django.conf import settings
    except ImportError as exc:
        raise ConfigurationError(
            f"autodiscover_tasks() without packages reads Django's INSTALLED_APPS, but "
            f"Django does not import ({exc}). Pass the packages: "
            "app.autodiscover_tasks(['proj.billing', 'proj.mail'])."
        ) from exc
    if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise ConfigurationError(
            "autodiscover_tasks() without packages reads Django's INSTALLED_APPS, but "
            "Django is not configured: set DJANGO_SETTINGS_MODULE (proj/celery.py does "
            "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'proj.settings'))."
        )
    if not apps.ready:
        django.setup()
    return [config.name for config in apps.get_app_configs()]


def setup() -> None:
    """``django.setup()`` if it has not run, then close the database connections
    this process holds, so that processes forked from it (prefork children) inherit
    none: a connection shared across a fork breaks both ends."""
    import django
    from django.apps import apps
    from django.db import connections

    if not apps.ready:
        django.setup()
    connections.close_all()


def close_old_connections() -> None:
    """Close this thread's connections that broke or passed ``CONN_MAX_AGE``."""
    from django.db import close_old_connections as close

    close()
