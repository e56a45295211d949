# mypy checks this file in tests/test_typing.py: the lines marked "E:" must be errors.
from taskq import App, AsyncResult

app = App("typing", broker="memory://")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True, max_retries=2)
def bound(self: object, name: str) -> str:
    return name


ok: AsyncResult[int] = add.delay(1, 2)
value: int = add.delay(1, 2).get()
text: str = bound.delay("x").get()
add.delay("x", 2)  # E: arg-type
add.delay(1)  # E: call-arg
bound.delay(1)  # E: arg-type
wrong: str = add.delay(1, 2).get()  # E: assignment
