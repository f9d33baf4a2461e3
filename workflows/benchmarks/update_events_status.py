"""Benchmark case of updateEventsStatus: ``rows`` live events, against the minimal SQL doing the
same three things (expire, copy outcomes, route) in one statement each.

The data is a day and a half of a busy Message Center after the workflow could not run for a
day (an outage): the oldest quarter of the events was routed before the outage and is pending
delivery, most of their logs final since (their outcomes to copy), some still pending; a fifth of
those oldest events never got routed and are now too old; the other three quarters arrived during
the last day and wait to be routed, 6% of them of event types without a published template. Event
types have several template versions (the latest published one wins) and drafts.

After the full run the sending side finalises the logs of every event it routed and the workflow
runs once, unmeasured, to copy their outcomes (``settle``): in production a routed event's log is
final within minutes, so the events pending delivery are only the last run's. Without it, the
hundreds of thousands of events the full run routed would stay pending delivery for good and every
incremental run would re-check them all, a cost that grows with the base, not with the new rows.

The increment is the next ten minutes: new pending events (80% of the increment's rows), and the
sending side finalising the logs of the events routed by the runs before.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import F
from django.utils import timezone

from campaign.bulk_load import load, reset_sequences
from campaign.models import Channel, Delivery, DeliveryLog, Event, EventStatus, LogStatus, MessageTemplate
from workflows.benchmarks import BenchmarkCase, register

EVENT_TYPES = 40
#: Types 0..35 have published email templates, the first 12 also SMS, the first 6 also push;
#: 36..39 have drafts only.
PUBLISHED_TYPES = 36
SMS_TYPES = 12
PUSH_TYPES = 6

PENDING_FIELDS = ("id", "event_type", "channel", "payload", "email", "phone", "status", "created_at", "updated_at")
ROUTED_FIELDS = ("id", "event_type", "channel", "payload", "email", "phone", "status", "template", "delivery_log",
                 "created_at", "updated_at")
LOG_FIELDS = ("id", "delivery", "address", "variant", "event_id", "status", "failure_type", "failure_reason",
              "error_text", "created_at", "updated_at")

EVENTS, LOGS, DELIVERIES = Event._meta.db_table, DeliveryLog._meta.db_table, Delivery._meta.db_table


def _event_type(rng: random.Random) -> tuple[str, str]:
    """(event type, channel) of one new event: mostly published types, mostly email."""
    if rng.random() < 0.06:
        return f"type{rng.randrange(PUBLISHED_TYPES, EVENT_TYPES):02d}", Channel.EMAIL
    number = rng.randrange(PUBLISHED_TYPES)
    draw = rng.random()
    if number < PUSH_TYPES and draw < 0.15:
        return f"type{number:02d}", Channel.PUSH
    if number < SMS_TYPES and draw < 0.35:
        return f"type{number:02d}", Channel.SMS
    return f"type{number:02d}", Channel.EMAIL


def _final_log_status(rng: random.Random) -> int:
    draw = rng.random()
    if draw < 0.10:
        return LogStatus.PENDING
    if draw < 0.75:
        return LogStatus.SENT
    if draw < 0.87:
        return LogStatus.FAILED
    if draw < 0.95:
        return LogStatus.IGNORED
    return LogStatus.CANCELLED


def _plan(*, rows: int, seed: int, now: datetime, templates: dict[tuple[str, str], MessageTemplate],
          earlier: dict[tuple[str, str], Delivery]) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """The events (and logs) of the data set, in id order, as ``(kind, row)``: the same every time
    for the same seed."""
    rng = random.Random(seed)
    old = rows // 4
    log_id = 0
    for event_id in range(1, rows + 1):
        event_type, channel = _event_type(rng)
        email, phone = f"u{event_id}@example.com", f"+336{event_id:08d}"
        if channel == Channel.SMS and rng.random() < 0.5:
            email = ""
        payload = {"n": event_id}
        if event_id <= old:
            created = now - timedelta(hours=48) + timedelta(hours=18) * (event_id / old)
            template = templates.get((event_type, channel))
            if template is None or rng.random() < 0.2:  # never routed: now too old
                yield "pending", (event_id, event_type, channel, payload, email, phone, EventStatus.PENDING, created, created)
                continue
            log_id += 1
            address = {Channel.EMAIL: email, Channel.SMS: phone}.get(channel) or email or phone
            status = _final_log_status(rng)
            yield "log", (log_id, earlier[event_type, channel].pk, address, "", event_id, status, 0, 0, "",
                          created, created + timedelta(minutes=rng.uniform(1, 30)))
            yield "routed", (event_id, event_type, channel, payload, email, phone, EventStatus.PENDING_DELIVERY,
                             template.pk, log_id, created, created)
        else:
            created = now - timedelta(hours=23) * (1 - (event_id - old) / (rows - old))
            yield "pending", (event_id, event_type, channel, payload, email, phone, EventStatus.PENDING, created, created)


class UpdateEventsStatusCase(BenchmarkCase):
    workflow_id = "updateEventsStatus"

    def populate(self, *, rows: int, seed: int) -> None:
        now = timezone.now()
        templates: dict[tuple[str, str], MessageTemplate] = {}
        for number in range(EVENT_TYPES):
            event_type = f"type{number:02d}"
            channels = ([Channel.EMAIL] + ([Channel.SMS] if number < SMS_TYPES else [])
                        + ([Channel.PUSH] if number < PUSH_TYPES else []))
            for channel in channels:
                published = number < PUBLISHED_TYPES
                MessageTemplate.objects.create(label=f"{event_type} {channel} v1", event_type=event_type, channel=channel,
                                               published=published, published_at=now - timedelta(days=60) if published else None)
                latest = MessageTemplate.objects.create(
                    label=f"{event_type} {channel} v2", event_type=event_type, channel=channel,
                    published=published, published_at=now - timedelta(days=5) if published else None)
                MessageTemplate.objects.create(label=f"{event_type} {channel} v3 draft", event_type=event_type, channel=channel)
                if published:
                    templates[event_type, channel] = latest
        # The execution deliveries of an earlier month, holding the logs of the events routed then.
        earlier = {pair: Delivery.objects.create(label=f"{template.label} — earlier", kind=Delivery.Kind.TRANSACTIONAL,
                                                 template=template, channel=template.channel, state=Delivery.State.IN_PROGRESS,
                                                 created_at=now - timedelta(days=40))
                   for pair, template in templates.items()}
        # Three passes over the same seeded plan: pending events, routed events, their logs. (Each
        # load lists only the columns it has values for: the others stay NULL.)
        def plan() -> Iterator[tuple[str, tuple[Any, ...]]]:
            return _plan(rows=rows, seed=seed, now=now, templates=templates, earlier=earlier)

        load(Event, PENDING_FIELDS, (row for kind, row in plan() if kind == "pending"))
        load(Event, ROUTED_FIELDS, (row for kind, row in plan() if kind == "routed"))
        load(DeliveryLog, LOG_FIELDS, (row for kind, row in plan() if kind == "log"))
        reset_sequences(Event, DeliveryLog)

    def sql_bound(self) -> None:
        now = timezone.now()
        stamp = connection.ops.adapt_datetimefield_value(now)
        cutoff = connection.ops.adapt_datetimefield_value(now - timedelta(hours=24))
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {EVENTS} SET status = %s, processed_at = %s, updated_at = %s WHERE status = %s AND created_at < %s",
                [EventStatus.TOO_OLD, stamp, stamp, EventStatus.PENDING, cutoff],
            )
            cursor.execute(
                f"""
                UPDATE {EVENTS} AS e
                SET status = CASE l.status WHEN 1 THEN 'sent' WHEN 2 THEN 'delivery_failed' ELSE 'ignored' END,
                    processed_at = %s, updated_at = %s
                FROM {LOGS} AS l
                WHERE e.status = %s AND l.id = e.delivery_log_id AND l.status IN (0, 1, 2, 7)
                """,
                [stamp, stamp, EventStatus.PENDING_DELIVERY],
            )
        # The templates table is tiny: the latest published template of each pair, and its
        # delivery of the month, are picked here; the events are routed by three statements.
        routes: dict[tuple[str, str], MessageTemplate] = {}
        month = timezone.localtime(now, timezone.get_default_timezone()).strftime("%Y-%m")
        ranked = MessageTemplate.objects.filter(published=True).order_by(F("published_at").asc(nulls_first=True), "id")
        for template in ranked:  # the last one of each pair wins
            routes[template.event_type, template.channel] = template
        route_rows = []
        for (event_type, channel), template in routes.items():
            delivery = Delivery.objects.create(label=f"{template.label} — {month}", kind=Delivery.Kind.TRANSACTIONAL,
                                               template=template, channel=template.channel, state=Delivery.State.IN_PROGRESS,
                                               created_at=now, started_at=now)
            route_rows.append({"event_type": event_type, "channel": channel, "delivery_id": delivery.pk})
        if connection.vendor == "postgresql":
            route_table = "json_to_recordset(%s::json) AS r(event_type text, channel text, delivery_id bigint)"
        else:
            route_table = ("(SELECT json_extract(value, '$.event_type') AS event_type,"
                           " json_extract(value, '$.channel') AS channel,"
                           " json_extract(value, '$.delivery_id') AS delivery_id FROM json_each(%s)) AS r")
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {LOGS}")
            floor = cursor.fetchone()[0]
            cursor.execute(
                f"""
                INSERT INTO {LOGS} (delivery_id, profile_id, address, variant, event_id, status, failure_type,
                                    failure_reason, error_text, created_at, updated_at)
                SELECT r.delivery_id, NULL,
                       CASE e.channel WHEN 'email' THEN e.email WHEN 'sms' THEN e.phone
                                      ELSE COALESCE(NULLIF(e.email, ''), e.phone) END,
                       '', e.id, 6, 0, 0, '', %s, %s
                FROM {EVENTS} AS e JOIN {route_table} ON r.event_type = e.event_type AND r.channel = e.channel
                WHERE e.status = %s
                """,
                [stamp, stamp, json.dumps(route_rows), EventStatus.PENDING],
            )
            cursor.execute(
                f"""
                UPDATE {EVENTS} AS e SET status = %s, template_id = d.template_id, delivery_log_id = l.id, updated_at = %s
                FROM {LOGS} AS l JOIN {DELIVERIES} AS d ON d.id = l.delivery_id
                WHERE l.id > %s AND l.event_id = e.id
                """,
                [EventStatus.PENDING_DELIVERY, stamp, floor],
            )
            cursor.execute(
                f"UPDATE {EVENTS} SET status = %s, processed_at = %s, updated_at = %s WHERE status = %s",
                [EventStatus.NOT_TAKEN_INTO_ACCOUNT, stamp, stamp, EventStatus.PENDING],
            )
            if connection.vendor == "postgresql":
                # The runner rolls the bound back, so the foreign-key checks that Django's
                # constraints defer to the commit would never run: run them now, as a commit would
                # (the workflow pays them at each batch's commit).
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")

    def fingerprint(self) -> Any:
        """Per status and template: count, sum of ids, how many have a log and a processing time;
        the links event ↔ log; the logs per delivery label (ids of new logs and deliveries differ
        between the two runs: sequences are not rolled back)."""
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                SELECT e.status, COALESCE(t.label, ''), COUNT(*), SUM(e.id),
                       SUM(CASE WHEN e.delivery_log_id IS NULL THEN 0 ELSE 1 END),
                       SUM(CASE WHEN e.processed_at IS NULL THEN 0 ELSE 1 END)
                FROM {EVENTS} AS e LEFT JOIN {MessageTemplate._meta.db_table} AS t ON t.id = e.template_id
                GROUP BY e.status, t.label ORDER BY e.status, COALESCE(t.label, '')
                """
            )
            events = [tuple(map(_plain, row)) for row in cursor.fetchall()]
            cursor.execute(
                f"""
                SELECT COUNT(*), SUM(l.status), SUM(LENGTH(l.address)), SUM(e.id)
                FROM {EVENTS} AS e JOIN {LOGS} AS l ON l.id = e.delivery_log_id AND l.event_id = e.id
                """
            )
            links = tuple(map(_plain, cursor.fetchone()))
            cursor.execute(
                f"""
                SELECT d.label, d.state, d.channel, COUNT(*), SUM(l.event_id), SUM(l.status), SUM(LENGTH(l.address))
                FROM {LOGS} AS l JOIN {DELIVERIES} AS d ON d.id = l.delivery_id
                GROUP BY d.label, d.state, d.channel ORDER BY d.label
                """
            )
            deliveries = [tuple(map(_plain, row)) for row in cursor.fetchall()]
        return {"events": events, "links": links, "deliveries": deliveries}

    def add_increment(self, *, rows: int, seed: int) -> None:
        rng = random.Random(seed)
        now = timezone.now()
        first_id = (Event.objects.order_by("-id").values_list("id", flat=True).first() or 0) + 1
        new_events = max(1, int(rows * 0.8))
        load(Event, PENDING_FIELDS, (
            (event_id, *_event_type(rng), {"n": event_id}, f"u{event_id}@example.com", f"+336{event_id:08d}",
             EventStatus.PENDING, now, now)
            for event_id in range(first_id, first_id + new_events)
        ))
        reset_sequences(Event)
        # The sending side finalised meanwhile the logs of the events routed by the runs before.
        self._finalise_routed_logs(now=now)

    def settle(self) -> bool:
        return self._finalise_routed_logs(now=timezone.now()) > 0

    def _finalise_routed_logs(self, *, now: datetime) -> int:
        """The sending side's work: every pending log of an event becomes sent (one statement)."""
        return DeliveryLog.objects.filter(status=LogStatus.PENDING, event_id__isnull=False).update(
            status=LogStatus.SENT, updated_at=now)


def _plain(value: Any) -> Any:
    """Database numbers as plain ints (PostgreSQL sums are Decimals), for comparison."""
    return int(value) if isinstance(value, (int, float)) or type(value).__name__ == "Decimal" else value


register(UpdateEventsStatusCase())
