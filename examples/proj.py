"""The example project: the quickstart's tasks and a beat schedule.

With no broker configured, taskq uses taskq.sqlite3 beside this file (the
quickstart); docker-compose.yml runs it on RabbitMQ with Redis results.
"""

from datetime import datetime, timezone

from taskq import App

app = App(
    "proj",
    # `taskq -A proj beat` sends proj.heartbeat every 5 seconds.
    beat_schedule={"heartbeat": {"task": "proj.heartbeat", "schedule": 5.0}},
)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True, max_retries=3)
def flaky(self, attempts_needed: int) -> str:
    """Fails until its ``attempts_needed``-th run, retrying after 0.5 s."""
    if self.request.retries + 1 < attempts_needed:
        raise self.retry(countdown=0.5)
    return f"succeeded on attempt {self.request.retries + 1}"


@app.task
def heartbeat() -> str:
    """The periodic task: the worker logs its result, the time it ran."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
