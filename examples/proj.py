"""The quickstart app: no broker configured, so taskq uses taskq.sqlite3 beside this file."""

from taskq import App

app = App("proj")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True, max_retries=3)
def flaky(self, attempts_needed: int) -> str:
    """Fails until its ``attempts_needed``-th run, retrying after 0.5 s."""
    if self.request.retries + 1 < attempts_needed:
        raise self.retry(countdown=0.5)
    return f"succeeded on attempt {self.request.retries + 1}"
