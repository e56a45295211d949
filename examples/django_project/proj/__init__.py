# The app is made when Django starts, so @shared_task tasks find it (as with Celery).
from .celery import app as celery_app

__all__ = ("celery_app",)
