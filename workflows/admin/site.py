"""Where the technical workflows sit in the admin site: first on the index (and in the navigation
sidebar), opening on the dashboard, which "View site" leads to as well.

Django lists the apps alphabetically, which put "Technical workflows" last, after the campaign's
models, and "View site" pointed at the site root, which serves no page. Here, on the site the
workflow admin is registered on (as :mod:`workflows.admin.dashboard` mounts the dashboard there):

- the "Technical workflows" section comes first, its rows in the order an operator uses them:
  the dashboard, the workflows, their runs, the journal, the audit trail;
- "View site" opens the dashboard, for those who may read it (view_workflow); others do not see
  the link, since the site has no public page.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse

APP_LABEL = "workflows"

#: The row the dashboard adds to the section, as the index and the sidebar show a model's.
DASHBOARD_ROW = {"name": "Dashboard and heat map", "object_name": "Dashboard", "add_url": None, "view_only": True,
                 "perms": {"view": True}}

#: The section's models in this order (others, if any, after them by name).
MODEL_ORDER = ("Workflow", "WorkflowRun", "WorkflowLog", "WorkflowAudit")


def may_view_dashboard(request: HttpRequest) -> bool:
    # The dashboard view's own check.
    return request.user.is_active and request.user.is_staff and request.user.has_perm(f"{APP_LABEL}.view_workflow")


def workflows_first(app_list: list[dict[str, Any]], *, dashboard_url: str | None) -> list[dict[str, Any]]:
    """``app_list`` (as :meth:`AdminSite.get_app_list` builds it) with the workflows' section first,
    its models in :data:`MODEL_ORDER`, the dashboard on top when ``dashboard_url`` is given."""
    section = next((app for app in app_list if app["app_label"] == APP_LABEL), None)
    if section is None:
        return app_list
    section["models"].sort(key=lambda model: (
        MODEL_ORDER.index(model["object_name"]) if model["object_name"] in MODEL_ORDER else len(MODEL_ORDER),
        model["name"],
    ))
    if dashboard_url is not None:
        section["models"].insert(0, {**DASHBOARD_ROW, "admin_url": dashboard_url})
    return [section, *(app for app in app_list if app is not section)]


def present_workflows(site: admin.AdminSite) -> None:
    """Order ``site``'s index and sidebar with :func:`workflows_first`, and point its "View site"
    at the dashboard (the URL ``admin:workflows_dashboard``)."""
    build_app_list = site.get_app_list
    build_context = site.each_context

    def get_app_list(request: HttpRequest, app_label: str | None = None) -> list[dict[str, Any]]:
        dashboard_url = reverse(f"{site.name}:workflows_dashboard") if may_view_dashboard(request) else None
        return workflows_first(build_app_list(request, app_label), dashboard_url=dashboard_url)

    def each_context(request: HttpRequest) -> dict[str, Any]:
        context = build_context(request)
        context["site_url"] = reverse(f"{site.name}:workflows_dashboard") if may_view_dashboard(request) else None
        return context

    site.get_app_list = get_app_list
    site.each_context = each_context


present_workflows(admin.site)
