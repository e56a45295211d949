from django.urls import path
from reports import views

urlpatterns = [
    path("reports/", views.create_report),
    path("reports/<int:report_id>/", views.report_detail),
]
