"""The admin of the campaign domain, for functional administrators and operators.

Three rules keep these pages usable on an instance with millions of logs:

- Tables written by other systems (raw feedback and hits) or computed by workflows (logs, archived
  events, aggregates, forecast, billing metrics, report sends, audience members) are **read-only**:
  an edit there would be overwritten, or would silently disagree with what the workflows computed.
  Users with the view permission can still look at them.
- A foreign key to a big table (Profile, DeliveryLog) is never a ``<select>`` that loads the table:
  it is a raw id (or an autocomplete for the mid-sized tables: campaigns, deliveries, templates).
- On the big tables the changelist asks the database only for indexed work: no full count, no
  facets, no date hierarchy (its year list is a scan of the whole table), exact searches on indexed
  columns, and ``list_select_related`` spelled out. The last one matters for correctness too: left
  to itself the changelist would ``select_related()`` every non-null foreign key with an INNER JOIN,
  and a tracking row whose delivery log was purged (no database constraint, on purpose) would
  vanish from the list.

One module per area; importing this package (Django's admin autodiscovery does) registers them all.
The building blocks they share, the read-only mixin among them, are in :mod:`campaign.admin.base`.
"""

from campaign.admin import deliveries, events, integrations, logs, profiles, reports
from campaign.admin.base import ReadOnlyAdmin, ReadOnlyAdminMixin
from campaign.admin.reports import ReportShareForm

__all__ = [
    "ReadOnlyAdmin",
    "ReadOnlyAdminMixin",
    "ReportShareForm",
    "deliveries",
    "events",
    "integrations",
    "logs",
    "profiles",
    "reports",
]
