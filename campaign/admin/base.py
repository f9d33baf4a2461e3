"""What the admin pages share: the read-only mixin, the large-table settings and the links.

The read-only mixin is the one of the whole project: the campaign tables that other systems or
workflows write use it here, and the workflow engine's history pages (``workflows.admin``) use the
same one, since ``workflows`` may import ``campaign`` and never the reverse.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

#: URLs typed without a scheme are read as https:// (Django 6's default, chosen now).
HTTPS_URL_FIELDS: dict[type, dict[str, Any]] = {models.URLField: {"assume_scheme": "https"}}

#: Largest primary key (a 64-bit signed integer on both databases).
MAX_ID = 2**63 - 1


def changelist_link(model: type, text: str, **lookups: Any) -> str:
    """A link to ``model``'s changelist filtered by ``lookups`` (e.g. ``delivery__id__exact=5``)."""
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    return format_html('<a href="{}?{}">{}</a>', url, urlencode(lookups), text)


def delivery_log_link(delivery_log_id: int | None) -> str:
    """A link to a delivery log by id, without loading it: it may have been purged already."""
    if delivery_log_id is None:
        return "-"
    url = reverse("admin:campaign_deliverylog_change", args=[delivery_log_id])
    return format_html('<a href="{}">#{}</a>', url, delivery_log_id)


def as_id(term: str) -> int | None:
    """``term`` as a primary key, or None when it cannot be one (a larger number would make SQLite
    raise instead of matching nothing)."""
    if not (term.isascii() and term.isdigit()):
        return None
    value = int(term)
    return value if value <= MAX_ID else None


class ReadOnlyAdminMixin:
    """For tables that other systems, workflows or the engine write (an edit would be overwritten,
    or would make the history lie): viewing only, for anyone with the view permission (superusers
    included); no add, change or delete, hence no "delete selected" action. Goes on a ModelAdmin or
    on an inline (the signatures take the inline's ``obj`` too)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The model admin of a read-only campaign table."""


class LargeTableMixin:
    """For tables that grow without bound: a filtered page does not also count the whole table,
    and there are no per-filter facet counts (each one another count). The paginator's count of
    the rows shown remains; on an unfiltered page that is the whole table."""

    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER


class DeliveryLogIdSearchMixin:
    """Search rows by the id of the delivery log they point to, through the foreign key's index;
    the generic ``__exact`` search on an integer casts the column to text and scans the table."""

    search_fields: tuple[str, ...] = ("delivery_log_id",)
    search_help_text = "Delivery log id."

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        delivery_log_id = as_id(term)
        if delivery_log_id is None:
            return queryset.none(), False
        return queryset.filter(delivery_log_id=delivery_log_id), False
