"""The project's task app: Celery's four lines, with ``from taskq import App``.

Before (Celery)::

    from celery import Celery
    app = Celery("proj")
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.autodiscover_tasks()
"""

import os

from taskq import App

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = App("proj")
# Every CELERY_* name in proj/settings.py is a setting (CELERY_BROKER_URL is broker_url).
app.config_from_object("django.conf:settings", namespace="CELERY")
# A worker imports each installed app's tasks.py at start.
app.autodiscover_tasks()
