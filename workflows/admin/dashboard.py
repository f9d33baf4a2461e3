"""Mounts the "Technical workflows" dashboard in the admin site; the page itself is
:mod:`workflows.dashboard`.

The dashboard is a page of this admin at the app's level, not a model's: /admin/workflows/dashboard/
(a model admin's own URLs all sit under /admin/workflows/<model>/). It is put in front of the site's
URLs here, with the rest of the workflow admin, so the project's root URLconf names nothing of the
engine. The view checks its permissions itself (staff, and workflows.view_workflow).
"""

from __future__ import annotations

from django.contrib import admin
from django.urls import URLPattern, path

from workflows.dashboard import dashboard_view


def mount_dashboard(site: admin.AdminSite) -> None:
    """Serve :func:`workflows.dashboard.dashboard_view` at ``<site>/workflows/dashboard/``
    (URL name ``admin:workflows_dashboard``)."""
    site_urls = site.get_urls

    def get_urls() -> list[URLPattern]:
        return [path("workflows/dashboard/", dashboard_view, name="workflows_dashboard"), *site_urls()]

    site.get_urls = get_urls


mount_dashboard(admin.site)
