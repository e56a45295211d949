"""The interop suite's two apps: the same tasks in Celery (``celery_app``) and in
taskq (``taskq_app``), run by real ``celery worker`` and ``taskq worker``
processes against the shared Redis and RabbitMQ (tests/test_interop.py)."""
