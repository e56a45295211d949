import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .models import Report
from .tasks import count_words


@csrf_exempt
@require_POST
def create_report(request: HttpRequest) -> JsonResponse:
    with transaction.atomic():
        report = Report.objects.create(text=json.loads(request.body)["text"])
        # Sent when the transaction commits: the worker always finds the row.
        count_words.delay_on_commit(report.pk)
    return JsonResponse({"id": report.pk, "status": report.status}, status=201)


@require_GET
def report_detail(request: HttpRequest, report_id: int) -> JsonResponse:
    report = Report.objects.get(pk=report_id)
    return JsonResponse({"id": report.pk, "status": report.status, "words": report.words})
