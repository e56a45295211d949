"""The task app of the FastAPI example. Run a worker with:

taskq -A tasks worker -l info
"""

import os

from taskq import App

app = App(
    "tasks",
    broker=os.environ.get("BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("RESULT_BACKEND", "redis://127.0.0.1:6379/0"),
    task_default_queue=os.environ.get("TASK_QUEUE", "celery"),
    task_track_started=True,
)


@app.task
def resize(image_id: int, width: int) -> dict[str, int]:
    """Stands for slow work a request should not wait for."""
    return {"image_id": image_id, "width": width, "height": width * 3 // 4}


@app.task
def fail(message: str) -> None:
    raise ValueError(message)
