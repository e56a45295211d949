"""Send tasks to the quickstart worker and print their results."""

from proj import add, flaky

results = [add.delay(i, i) for i in range(5)]
for result in results:
    print(f"add -> {result.get(timeout=30)}")
print(f"flaky -> {flaky.delay(3).get(timeout=30)}")
