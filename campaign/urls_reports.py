"""URLs of the links sent in report emails (see campaign/report_views.py)."""

from django.urls import path

from campaign import report_views

app_name = "reports"

urlpatterns = [
    path("unsubscribe/<str:token>/", report_views.unsubscribe, name="unsubscribe"),
    path("download/<str:token>/", report_views.download, name="download"),
]
