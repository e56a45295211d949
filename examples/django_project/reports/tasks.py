"""Tasks of the reports app. ``shared_task`` needs no import of the project's app."""

from taskq import shared_task

from .models import Report


@shared_task
def count_words(report_id: int) -> int:
    report = Report.objects.get(pk=report_id)
    report.words = len(report.text.split())
    report.status = "done"
    report.save(update_fields=["words", "status"])
    return report.words


@shared_task(bind=True, max_retries=2)
def checked_add(self, x: int, y: int) -> int:
    """Plain arithmetic, to see a worker answer without the database."""
    return x + y
