"""A configuration module for tests/test_config.py (Celery-style lowercase names)."""

from datetime import timedelta

task_serializer = "json"
result_expires = timedelta(days=1)
task_routes = {"tests.*": {"queue": "tests"}}
_private_helper = "ignored"
