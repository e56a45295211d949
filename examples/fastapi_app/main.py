"""A FastAPI app that hands slow work to taskq and lets clients poll for it.

    uvicorn main:api            # the web app
    taskq -A tasks worker       # a worker

POST /images/{id}/resize sends a task and answers at once with its id (202);
GET /tasks/{task_id} reports its state and, once done, its result or error.
"""

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from tasks import app, resize

api = FastAPI(title="taskq with FastAPI")


class ResizeRequest(BaseModel):
    width: int


@api.post("/images/{image_id}/resize", status_code=202)
def request_resize(image_id: int, body: ResizeRequest) -> dict[str, str]:
    # A plain (not async) endpoint: FastAPI runs it in its thread pool, so the
    # broker round trip of delay() never blocks the event loop.
    result = resize.delay(image_id, body.width)
    return {"task_id": result.id}


@api.get("/tasks/{task_id}")
def task_status(task_id: str) -> dict[str, Any]:
    result = app.AsyncResult(task_id)
    state = result.state
    body: dict[str, Any] = {"task_id": task_id, "state": state}
    if state == "SUCCESS":
        body["result"] = result.result
    elif state == "FAILURE":
        body["error"] = repr(result.result)
    return body
