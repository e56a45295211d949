"""The project's own tests, run by Django's test runner (``python manage.py test``)
against the Redis in CELERY_BROKER_URL, with a taskq worker in a thread."""

from django.db import transaction
from django.test import TransactionTestCase
from proj.celery import app

from taskq.signals import task_prerun
from taskq.testing import running_worker

from .models import Report
from .tasks import checked_add, count_words


def wait_for_status(report_id: int, status: str, timeout: float = 15.0) -> Report:
    import threading
    import time

    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        report = Report.objects.get(pk=report_id)
        if report.status == status:
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"report {report_id} is {report.status!r}, not {status!r}")
        pause.wait(0.05)


class ReportTests(TransactionTestCase):
    """Real commits (TransactionTestCase), so on_commit callbacks run as in production."""

    def test_the_view_counts_words_after_the_commit(self) -> None:
        with running_worker(app, pool="threads"):
            response = self.client.post(
                "/reports/", {"text": "one two three"}, content_type="application/json"
            )
            self.assertEqual(response.status_code, 201)
            report = wait_for_status(response.json()["id"], "done")
        self.assertEqual(report.words, 3)
        self.assertEqual(self.client.get(f"/reports/{report.pk}/").json()["words"], 3)

    def test_nothing_is_sent_when_the_transaction_rolls_back(self) -> None:
        started: list[str] = []

        def record(sender: object, task_id: str, task: object, **kwargs: object) -> None:
            started.append(getattr(task, "name", "?"))

        task_prerun.connect(record)
        try:
            # One thread runs the tasks in the order they were sent.
            with running_worker(app, pool="threads", concurrency=1):
                try:
                    with transaction.atomic():
                        report = Report.objects.create(text="never counted")
                        count_words.delay_on_commit(report.pk)
                        raise RuntimeError("roll back")
                except RuntimeError:
                    pass
                self.assertEqual(checked_add.delay(2, 3).get(timeout=15), 5)
        finally:
            task_prerun.disconnect(record)
        self.assertEqual(started, ["reports.tasks.checked_add"])

    def test_shared_tasks_belong_to_the_project_app(self) -> None:
        self.assertIs(count_words.app, app)
        self.assertIn("reports.tasks.count_words", app.tasks)
