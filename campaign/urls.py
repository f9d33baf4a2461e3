from django.contrib import admin
from django.urls import include, path

from workflows.dashboard import dashboard_view

urlpatterns = [
    path("admin/workflows/dashboard/", dashboard_view, name="workflows_dashboard"),
    path("admin/", admin.site.urls),
    path("api/", include("campaign.urls_api")),
    path("reports/", include("campaign.urls_reports")),
    path("", include("workflows.urls")),
]
