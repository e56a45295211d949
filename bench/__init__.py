"""taskq's benchmark suite: taskq side by side with Celery, Dramatiq and Huey.

Run it with ``bench/run`` (see bench/README.md).
"""
