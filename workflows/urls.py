"""Machine-facing endpoints of the engine, mounted at the site root (``/healthz``, ``/metrics``)."""

from django.urls import path

from workflows import views

app_name = "workflows"

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.prometheus_metrics, name="metrics"),
]
