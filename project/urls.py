"""The root URLconf: the admin site, and the URLconfs of the apps, each under its prefix."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("campaign.urls_api")),
    path("reports/", include("campaign.urls_reports")),
    path("", include("workflows.urls")),
]
