from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("campaign.urls_api")),
    path("reports/", include("campaign.urls_reports")),
    path("", include("workflows.urls")),
]
