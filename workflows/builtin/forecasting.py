"""forecasting — Forecasting.

Why it exists: marketers schedule deliveries days ahead, and a profile that several of them target
in the same week gets tired of the brand (and unsubscribes). Every night this workflow works out
who the coming deliveries would contact (``ForecastLog``), how many messages each of those
profiles gets over the period — already sent plus planned: its *contact pressure* — and marks the
contacts that would take a profile over the fatigue threshold as excluded, taking them from the
lower-priority deliveries first. The sending side reads ``ForecastLog.excluded``.

Definitions (``docs/workflows/forecasting.md`` says the same for operators):

- **Reference time**: when the forecast pass started; every bound below is relative to it.
- **The forecast**: marketing deliveries in state ``scheduled`` or ``provisional`` whose
  ``scheduled_at`` lies within ``horizon_days`` before or after the reference time, bounds
  included (:func:`forecast_deliveries`). Proofs and transactional execution deliveries do not
  target profiles and are left out; so is a delivery without ``scheduled_at``.
- **Targets** of a delivery: :func:`forecast_targets`, the single place where a future targeting
  model plugs in.
- **Planned contact**: one ForecastLog row per (delivery, target profile): the delivery's channel,
  ``planned_at`` = its ``scheduled_at``, ``computed_at`` = the reference time.
- **Past contacts** of a profile: its DeliveryLog rows with status 1 sent, 2 failed or 6 pending
  (:data:`CONTACT_STATUSES`: a message sent, bounced after being sent, or about to go — the
  platform counts sent = delivered + bounces) created within ``horizon_days`` before the reference
  time, except the logs of deliveries in the forecast, which are counted as planned contacts.
- **Contact pressure** and exclusion: a profile's planned contacts are ranked by delivery priority
  (higher first), then the earlier ``planned_at``, then the lower delivery id; the n-th one has
  pressure = past contacts + n, and is excluded when that pressure is above ``fatigue_threshold``.
  So a profile gets at most ``fatigue_threshold`` messages over the period, the highest-priority
  ones, and the earlier scheduled delivery wins a tie.

Invariants:

- **A batch is a slice of profiles, complete.** The pass walks ``Profile.id`` in slices; one
  transaction deletes every ForecastLog row of the slice's profiles (rows of deliveries that left
  the forecast go this way), writes their planned contacts with one ``INSERT … SELECT`` — the
  targets of every delivery in the forecast, ranked per profile by a window function that also
  decides ``excluded``, so each row is written once — and advances the cursor. Every statement is
  bounded by the slice on both sides (:func:`forecast_targets` puts the range on every table it
  reads), so a batch costs the same at the start and at the end of a pass, and a reader never sees
  a profile half planned or planned but not yet excluded. A slice holds ``batch_size`` divided by
  the number of deliveries in the forecast profiles (at least one), so a transaction writes at
  most about ``batch_size`` rows. Only a slice's ids are ever loaded into Python.
- **One pass = one reference time.** A run starts a pass (reference time, horizon and threshold
  stored in the ``pass`` cursor) from the first profile. A run resumed after a pause continues its
  pass where it halted; any other run (including the one after a crash) starts a new pass: the
  forecast is a full rebuild from the source tables, so starting over gives exactly the result of
  an uninterrupted run, where continuing a crashed pass would finish a forecast of another day.
- **Safe to rerun.** Everything is recomputed from Delivery, ABTest, DeliveryLog, Profile, Quarantine
  and AppSubscription; a rerun over the same data writes the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from campaign.ab_tests import winner_targets, won_test
from campaign.audience import BLOCKLIST_FIELD, address_targets, on_denylist, push_targets
from campaign.models import Channel, Delivery, DeliveryLog, ForecastLog, LogStatus, Profile
from workflows.context import ActivityContext, Batch
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.properties import DurationProperty, IntegerProperty
from workflows.sql import db_datetime, table

WORKFLOW_ID = "forecasting"

#: DeliveryLog statuses that count as a contact: sent, failed (a bounce was sent), pending.
CONTACT_STATUSES = (LogStatus.SENT, LogStatus.FAILED, LogStatus.PENDING)

#: Delivery states of the provisional forecast.
FORECAST_STATES = (Delivery.State.SCHEDULED, Delivery.State.PROVISIONAL)

DEFAULT_HORIZON_DAYS = 7
DEFAULT_FATIGUE_THRESHOLD = 5

#: Planned contacts written per transaction, about: a slice holds this many profiles divided by the
#: number of deliveries in the forecast. 20,000 narrow rows are deleted, ranked and inserted in
#: about a second on PostgreSQL (the six indexes of ForecastLog are most of it), which keeps the
#: locks short, SQLite's single write lock included, while the per-batch overhead stays small.
DEFAULT_BATCH_SIZE = 20_000

#: Cursors in ``Workflow.cursors``.
PASS_CURSOR = "pass"  # {"run", "reference", "horizon_days", "fatigue_threshold"} of the current pass
PROFILE_CURSOR = "profile"  # profiles up to this id are done in the current pass


@dataclass(frozen=True)
class ForecastPass:
    """The reference time and parameters the batches of one pass share."""

    run_id: int
    reference: datetime
    horizon_days: int
    fatigue_threshold: int

    @property
    def start(self) -> datetime:
        return self.reference - timedelta(days=self.horizon_days)

    @property
    def end(self) -> datetime:
        return self.reference + timedelta(days=self.horizon_days)

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run_id, "reference": self.reference.isoformat(), "horizon_days": self.horizon_days,
                "fatigue_threshold": self.fatigue_threshold}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ForecastPass:
        return cls(run_id=value["run"], reference=datetime.fromisoformat(value["reference"]),
                   horizon_days=value["horizon_days"], fatigue_threshold=value["fatigue_threshold"])


# --- Who and what is in the forecast ----------------------------------------------------------------


def forecast_deliveries(forecast: ForecastPass) -> QuerySet[Delivery]:
    """The deliveries in the forecast of ``forecast`` (index ``delivery_state_sched_idx``)."""
    return Delivery.objects.filter(
        kind=Delivery.Kind.MARKETING, state__in=FORECAST_STATES,
        scheduled_at__gte=forecast.start, scheduled_at__lte=forecast.end,
    )


def forecast_targets(delivery: Delivery, *, after: int = 0, upto: int | None = None) -> QuerySet[Profile]:
    """The profiles ``delivery`` would contact, among those whose id is in (after, upto] (no upper
    bound when ``upto`` is None): a queryset, never evaluated here.

    The project has no targeting model yet, so the target is defined here, and only here:

    - a delivery that has prepared its target (it has DeliveryLog rows) targets the profiles of
      its logs in a contact status (1, 2, 6), except those that opted out of its channel since and
      the logs whose address went on the denylist since;
    - the winner delivery of an A/B test targets the rest of the test's target
      (:func:`campaign.ab_tests.winner_targets`);
    - otherwise, every profile the channel may reach (:mod:`campaign.audience`): for email and SMS,
      not opted out, with an address that is neither quarantined nor on the denylist (an
      ``erroneous`` address is still tried); for push, an enabled subscription.

    The id range is put on every table read (profiles, logs, subscriptions), not only on the
    profiles: the database does not carry a range across a join, and without it a later slice
    would read everything before it again. The quarantine and a winner's test logs are probed per
    row through their indexes (address; profile).
    """
    def in_range(column: str) -> Q:
        bounds = Q(**{f"{column}__gt": after})
        return bounds if upto is None else bounds & Q(**{f"{column}__lte": upto})

    channel = delivery.channel
    in_slice = Profile.objects.filter(in_range("pk"))
    logs = DeliveryLog.objects.filter(delivery_id=delivery.pk)
    if logs.exists():
        contacted = (logs.filter(in_range("profile_id"), status__in=CONTACT_STATUSES)
                     .exclude(on_denylist(OuterRef("address"), channel)))
        return in_slice.filter(**{BLOCKLIST_FIELD[channel]: False}).filter(
            Exists(contacted.filter(profile_id=OuterRef("pk"))))
    test = won_test(delivery)
    if test is not None:
        return winner_targets(test, in_slice)
    if channel == Channel.PUSH:
        subscriptions = push_targets(in_slice).filter(in_range("profile_id"))
        return in_slice.filter(blocklisted_push=False).filter(Exists(subscriptions.filter(profile_id=OuterRef("pk"))))
    return address_targets(in_slice, channel=channel)


# --- Set-based statements over one slice of profiles ------------------------------------------------


def _slice_condition(column: str, after: int, upto: int | None) -> tuple[str, list[int]]:
    if upto is None:
        return f"{column} > %s", [after]
    return f"{column} > %s AND {column} <= %s", [after, upto]


@dataclass(frozen=True)
class ProfileSlice:
    """The next profiles of a pass: ids in (after, upto], or above ``after`` for the last slice
    (``upto`` None), which is left open so that it covers every row beyond."""

    after: int
    upto: int | None
    profiles: int
    last_id: int


def profile_slice(after: int, size: int) -> ProfileSlice | None:
    """The next ``size`` profiles after ``after`` (primary key order), or None when there are none."""
    ids = list(Profile.objects.filter(pk__gt=after).order_by("pk").values_list("pk", flat=True)[:size])
    if not ids:
        return None
    return ProfileSlice(after=after, upto=ids[-1] if len(ids) == size else None, profiles=len(ids), last_id=ids[-1])


def clear_slice(forecast: ForecastPass, *, after: int, upto: int | None) -> int:
    """Delete every planned contact of the slice's profiles; returns how many belonged to
    deliveries no longer in the forecast. Call inside the batch's transaction."""
    where, params = _slice_condition("profile_id", after, upto)
    in_forecast_sql, in_forecast_params = forecast_deliveries(forecast).order_by().values("id").query.sql_with_params()
    forecast_logs = table(ForecastLog)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {forecast_logs} WHERE {where} AND delivery_id NOT IN ({in_forecast_sql})",
                       [*params, *in_forecast_params])
        stale = cursor.rowcount
        cursor.execute(f"DELETE FROM {forecast_logs} WHERE {where}", params)
    return stale


def planning_statement(deliveries: list[Delivery], forecast: ForecastPass, *, after: int, upto: int | None,
                       ) -> tuple[str, list[Any]]:
    """The INSERT … SELECT that writes the planned contacts of the slice's profiles, exclusions
    included, so that each row is written once.

    ``planned``: the targets of every delivery in the slice (one SELECT each, from
    :func:`forecast_targets`, joined by UNION ALL). ``past``: the past contacts of the profiles
    that have planned ones (index ``dlog_profile_idx``: one range per profile). ``ranked``: the
    running pressure, a window over each profile's contacts in priority order.
    """
    targets, params = [], []
    for delivery in deliveries:
        targets_of_delivery = forecast_targets(delivery, after=after, upto=upto).order_by().values("id")
        target_sql, target_params = targets_of_delivery.query.sql_with_params()
        targets.append(f"SELECT %s AS delivery_id, %s AS priority, %s AS planned_at, %s AS channel, target.id AS profile_id "
                       f"FROM ({target_sql}) target")
        params += [delivery.pk, delivery.priority, db_datetime(delivery.scheduled_at), delivery.channel, *target_params]
    in_forecast_sql, in_forecast_params = forecast_deliveries(forecast).order_by().values("id").query.sql_with_params()
    statuses = ", ".join(str(int(status)) for status in CONTACT_STATUSES)
    planned = "\n                UNION ALL\n                ".join(targets)
    sql = f"""
        INSERT INTO {table(ForecastLog)} (delivery_id, profile_id, channel, planned_at, excluded, computed_at)
        WITH planned AS (
                {planned}
        ),
        past AS (
            SELECT l.profile_id, COUNT(*) AS sends
            FROM {table(DeliveryLog)} l
            WHERE l.profile_id IN (SELECT p.profile_id FROM planned p)
              AND l.created_at >= %s AND l.created_at <= %s
              AND l.status IN ({statuses})
              AND l.delivery_id NOT IN ({in_forecast_sql})
            GROUP BY l.profile_id
        ),
        ranked AS (
            SELECT p.delivery_id, p.profile_id, p.channel, p.planned_at,
                   COALESCE(s.sends, 0) + ROW_NUMBER() OVER (
                       PARTITION BY p.profile_id ORDER BY p.priority DESC, p.planned_at, p.delivery_id
                   ) AS pressure
            FROM planned p LEFT JOIN past s ON s.profile_id = p.profile_id
        )
        SELECT r.delivery_id, r.profile_id, r.channel, r.planned_at, r.pressure > %s, %s FROM ranked r
    """
    params += [db_datetime(forecast.start), db_datetime(forecast.reference), *in_forecast_params,
               forecast.fatigue_threshold, db_datetime(forecast.reference)]
    return sql, params


def forecast_batch(after: int, size: int, *, forecast: ForecastPass) -> Batch:
    """Rebuild the forecast of the next ``size`` profiles after ``after``: one slice, complete, in
    the engine's transaction for this batch."""
    batch = profile_slice(after, size)
    if batch is None:
        return Batch(rows=0, cursor=after)
    stale = clear_slice(forecast, after=batch.after, upto=batch.upto)
    deliveries = list(forecast_deliveries(forecast).order_by("pk").only("pk", "channel", "priority", "scheduled_at",
                                                                       "ab_test_id"))
    if deliveries:
        sql, params = planning_statement(deliveries, forecast, after=batch.after, upto=batch.upto)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    in_slice = Q(profile_id__gt=batch.after) if batch.upto is None else Q(profile_id__gt=batch.after, profile_id__lte=batch.upto)
    planned = ForecastLog.objects.filter(in_slice).aggregate(
        forecast_contacts=Count("id"),
        exclusions=Count("id", filter=Q(excluded=True)),
        profiles=Count("profile_id", distinct=True),
        profiles_over_threshold=Count("profile_id", distinct=True, filter=Q(excluded=True)),
    )
    return Batch(rows=batch.profiles, cursor=batch.last_id, counters={"stale_contacts_removed": stale, **planned})


# --- The activity -------------------------------------------------------------------------------------


def current_pass(ctx: ActivityContext) -> ForecastPass:
    """This run's pass: the one it started (continued after a pause), or a new one from the first
    profile (any other run: the last pass is finished, or belongs to a run that died)."""
    stored = ctx.get_cursor(PASS_CURSOR)
    if stored and stored["run"] == ctx.run.pk:
        return ForecastPass.from_json(stored)
    forecast = ForecastPass(run_id=ctx.run.pk, reference=timezone.now(), horizon_days=ctx.properties["horizon_days"],
                            fatigue_threshold=ctx.properties["fatigue_threshold"])

    def start_pass() -> None:
        ctx.set_cursors({PASS_CURSOR: forecast.to_json(), PROFILE_CURSOR: 0})
        ctx.count("deliveries", forecast_deliveries(forecast).count())

    ctx.unit(start_pass)
    ctx.log(f"New forecast pass: reference time {forecast.reference.isoformat(timespec='seconds')}; "
            f"{ctx.activity.counters['deliveries']} deliveries scheduled from "
            f"{forecast.start.isoformat(timespec='seconds')} to {forecast.end.isoformat(timespec='seconds')}; "
            f"fatigue threshold {forecast.fatigue_threshold} messages.")
    return forecast


def compute_forecast(ctx: ActivityContext) -> None:
    """Plan the contacts of the deliveries in the forecast and exclude those over the threshold."""
    forecast = current_pass(ctx)
    deliveries = forecast_deliveries(forecast).count()
    slice_size = max(1, ctx.properties["batch_size"] // max(1, deliveries))
    ctx.set_progress_total(Profile.objects.filter(pk__gt=ctx.get_cursor(PROFILE_CURSOR, 0)).count())
    ctx.batches(PROFILE_CURSOR, lambda after, size: forecast_batch(after, size, forecast=forecast),
                start=0, batch_size=slice_size)
    counters = ctx.activity.counters
    for name in ("deliveries", "forecast_contacts", "stale_contacts_removed", "profiles", "profiles_over_threshold",
                 "exclusions"):
        counters.setdefault(name, 0)
    ctx.log(f"{counters['forecast_contacts']} contacts planned by {counters['deliveries']} deliveries for "
            f"{counters['profiles']} profiles; {counters['profiles_over_threshold']} profiles over the fatigue "
            f"threshold of {forecast.fatigue_threshold} messages; {counters['exclusions']} contacts excluded; "
            f"{counters['stale_contacts_removed']} contacts of deliveries no longer in the forecast removed.")


definition = register(WorkflowDefinition(
    id=WORKFLOW_ID,
    label="Forecasting",
    description="Computes the contacts planned by scheduled and provisional deliveries and the contact pressure per profile; "
                "excludes over-solicited profiles from lower-priority deliveries.",
    schedule=Schedule("0 1 * * *"),
    activities=(compute_forecast,),
    properties=(
        DurationProperty("horizon_days", DEFAULT_HORIZON_DAYS, minimum=1, maximum=366, unit="days",
                         help="The forecast covers deliveries scheduled this many days before and after the run, "
                              "and counts the messages sent over the days before."),
        IntegerProperty("fatigue_threshold", DEFAULT_FATIGUE_THRESHOLD, minimum=1, maximum=1_000, unit="messages",
                        help="Most messages a profile gets over the period (past and planned); the planned "
                             "contacts beyond it, lowest priority first, are excluded."),
        IntegerProperty("batch_size", DEFAULT_BATCH_SIZE, minimum=1, maximum=500_000,
                        help="Planned contacts written per transaction, about (a batch is a slice of profiles: "
                             "this divided by the number of deliveries in the forecast)."),
    ),
    batch_size=DEFAULT_BATCH_SIZE,
))
