"""Deterministic demo data for a fresh instance (``manage.py seed_demo``, run by ``make run``).

Why it exists: on a fresh install every technical workflow should find work to do -- raw feedback
and hits to consolidate, deliveries with stale indicators, an A/B test whose test period has just
ended, events waiting for a template, addresses to quarantine, old rows to purge -- and the
tables must agree with each other so that the workflows' results can be checked by eye.

How: the data is *simulated*, not drawn table by table. Each message has a send time, an outcome
reported by the provider after a short delay (delivered, bounce, or deferred then retried) and, when
delivered, opens, clicks and opt-outs at later times. Everything that happened before the last
consolidation (``anchor - UNCONSOLIDATED_WINDOW``) is already in the consolidated tables
(DeliveryLog status, TrackingLog, Quarantine and its denylist, profile blocklist flags); what
happened after it and before the anchor is still raw (SendingFeedback — spam complaints included —,
TrackingHit, InboundSms); nothing happens after the anchor. In that raw window one recipient of the
running newsletter complains and one of the running SMS replies STOP, so the first
updateDeliveryExecInfo run puts both on the denylist, and forecasting and the A/B test's winner
skip them from then on.
So the database looks like one whose workers stopped two hours ago while the sending and tracking
sides kept writing: a fresh instance's first updateDeliveryExecInfo run has real work.

Invariants:

- Deterministic: a single ``random.Random(seed)`` is drawn in a fixed order, no set is iterated and
  the wall clock is never read (timestamps derive from ``anchor``). The same seed and anchor give
  the same rows; when the tables start empty, the ids are the same too.
- Fast (100,000 profiles, ~670,000 rows, in well under a minute on SQLite and PostgreSQL): one
  transaction; rows buffered per table and written in large batches, with ``bulk_create`` for the
  small tables and, for the six big ones (``ROW_TABLES``), plain tuples through the shared bulk
  loader (:mod:`campaign.bulk_load`: COPY on PostgreSQL, one prepared INSERT on SQLite). Every id
  is assigned here, after the tables' highest id, so rows reference rows not yet written and
  nothing is read back; the sequences are reset at the end. No query runs per row.
- Raw rows (SendingFeedback, TrackingHit, InboundSms) only describe what is not consolidated yet:
  the workflow that consumes them starts from an empty cursor and must not count anything twice.

The modules, by role:

- :mod:`~campaign.demo.seeding`: the entry points (``seed_demo``, the anchor, the guard and ``--force``'s deletion);
- :mod:`~campaign.demo.parameters`, :mod:`~campaign.demo.bounces`, :mod:`~campaign.demo.channels`,
  :mod:`~campaign.demo.vocabulary`: the numbers, bounce texts and rules, channel behaviours and words drawn from;
- :mod:`~campaign.demo.simulation`: the order of the draws, over the areas :mod:`~campaign.demo.profiles`,
  :mod:`~campaign.demo.planning`, :mod:`~campaign.demo.sending`, :mod:`~campaign.demo.events` and
  :mod:`~campaign.demo.finishing`, which share :mod:`~campaign.demo.state`;
- :mod:`~campaign.demo.writer`: ids handed out in advance and rows written in batches.
"""

from __future__ import annotations

from campaign.demo.bounces import ALL_BOUNCES, DEFAULT_BOUNCE_RULES, Bounce
from campaign.demo.parameters import DEFAULT_PROFILES, DEFAULT_SEED, UNCONSOLIDATED_WINDOW
from campaign.demo.seeding import (
    DOMAIN_MODELS_DELETE_ORDER,
    SEEDED_MODELS,
    SeedResult,
    anchor_from_date,
    database_has_domain_data,
    default_anchor,
    delete_domain_data,
    seed_demo,
)

__all__ = [
    "ALL_BOUNCES",
    "DEFAULT_BOUNCE_RULES",
    "DEFAULT_PROFILES",
    "DEFAULT_SEED",
    "DOMAIN_MODELS_DELETE_ORDER",
    "SEEDED_MODELS",
    "UNCONSOLIDATED_WINDOW",
    "Bounce",
    "SeedResult",
    "anchor_from_date",
    "database_has_domain_data",
    "default_anchor",
    "delete_domain_data",
    "seed_demo",
]
