"""Report shares: creating them, keeping their beat schedule, and sending one due time exactly once.

Why here and not in signals or the admin: the same rules apply whether a share is created in the
admin, the shell or a test, and "send now" must trigger only after the share (and its recipients)
committed. The admin calls :func:`share_saved`; code calls :func:`create_share`. Runs are queued,
and the beat row's message built, through :mod:`campaign.workflow_runs` (the domain never imports
the workflow engine; the engine provides those two services).

Exactly once per due time: :func:`send_share` first inserts the ReportSend row (unique on share and
due time) in its own transaction; only the caller that inserted it renders and sends. A duplicate
trigger, a Celery retry or a second beat tick finds the row and does nothing. An attempt known to
have emailed nothing — ``failed``, or left ``rendering`` by a run that died — is claimed again by
the next trigger; one that died while ``emailing`` is left for a person to look at (the messages
may have gone out).
"""

from __future__ import annotations

import calendar
import logging
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage, get_connection
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, PeriodicTask

from campaign import reports, workflow_runs
from campaign.models import Report, ReportSend, ReportShare

log = logging.getLogger(__name__)

WORKFLOW_ID = "reportSendingNow"
DEFAULT_MAX_ATTACHMENT_BYTES = 5 * 1024 * 1024
UNSUBSCRIBE_SALT = "campaign.reports.unsubscribe"
DOWNLOAD_SALT = "campaign.reports.download"
#: Links in emails stay valid this long.
LINK_MAX_AGE_S = 400 * 24 * 3600
#: A share's run waits this long for another reportSendingNow run to finish (one run at a time).
WAIT_FOR_LEASE_S = 120.0
Recurrence = ReportShare.Recurrence


# -- recipients ----------------------------------------------------------------------------------

def users_for_addresses(addresses: Iterable[str]) -> list:
    """The active users with these email addresses (case-insensitive); ValidationError naming every
    address that is not a user of the instance (reports never go to outsiders)."""
    User = get_user_model()
    wanted = sorted({address.strip().lower() for address in addresses if address.strip()})
    found: dict[str, object] = {}
    for address in wanted:  # a handful of addresses typed in a form
        user = User.objects.filter(is_active=True, email__iexact=address).order_by("pk").first()
        if user is not None:
            found[address] = user
    unknown = [address for address in wanted if address not in found]
    if unknown:
        raise ValidationError(
            "Not users of this instance (reports are only sent to users): %(addresses)s",
            params={"addresses": ", ".join(unknown)}, code="not_a_user",
        )
    return list({user.pk: user for user in found.values()}.values())


def check_recipients(users: Iterable) -> None:
    """Every recipient must be an active user with an email address."""
    problems = [str(user) for user in users if not user.is_active or not user.email]
    if problems:
        raise ValidationError("Recipients must be active users with an email address: %(users)s",
                              params={"users": ", ".join(problems)}, code="no_address")


# -- creating shares and their schedule ----------------------------------------------------------

def create_share(*, report: Report, recipients: Iterable, recurrence: str = Recurrence.NOW,
                 created_by=None, **fields) -> ReportShare:
    """Create a share with its recipients, its beat schedule, and (send now) its run on commit."""
    recipients = list(recipients)
    check_recipients(recipients)
    with transaction.atomic():
        share = ReportShare(report=report, recurrence=recurrence, created_by=created_by, **fields)
        share.full_clean()
        share.save()
        share.recipients.set(recipients)
        share_saved(share, created=True)
    return share


def share_saved(share: ReportShare, *, created: bool) -> None:
    """After a share and its recipients were saved: sync its schedule; trigger a "send now" share
    (only when created and not deferred to a clocked time) once the transaction commits."""
    sync_schedule(share)
    if created and share.recurrence == Recurrence.NOW and share.enabled and share.periodic_task_id is None:
        share_id = share.pk
        transaction.on_commit(lambda: trigger_send(share_id=share_id))


def trigger_send(*, share_id: int, due_at: datetime | None = None) -> None:
    """Queue a run for one share. Called after commit: a refusal (workflow paused or stopped) must
    not turn the saved share into an error page; it is logged, and a run of reportSendingNow
    without ``share_id`` after resuming sends every "send now" share still without a send."""
    overrides: dict = {"share_id": share_id}
    if due_at is not None:
        overrides["due_at"] = due_at.isoformat()
    try:
        workflow_runs.run_now(WORKFLOW_ID, actor="report share", trigger="event", overrides=overrides,
                              audit_action=None, wait_for_lease_s=WAIT_FOR_LEASE_S)
    except workflow_runs.RunRefused as refusal:
        log.warning("report share #%s not sent now: %s", share_id, refusal)


def send_again(send: ReportSend, *, user: AbstractBaseUser) -> bool:
    """A person's decision that a due time did not go out (it ``failed``, or its run died while
    ``emailing`` and nobody received it): release the row and queue the run that sends it again.
    False, and nothing done, for a row that was sent or is still being rendered."""
    # One transaction: a refused run (workflow paused) leaves the row as it was, and the run's
    # message leaves only once the row is released.
    with transaction.atomic():
        released = ReportSend.objects.filter(
            pk=send.pk, status__in=[ReportSend.Status.FAILED, ReportSend.Status.EMAILING],
        ).update(status=ReportSend.Status.FAILED, error=f"released for a resend by {user.get_username()}")
        if not released:
            return False
        workflow_runs.run_now(WORKFLOW_ID, user=user, trigger="admin", wait_for_lease_s=WAIT_FOR_LEASE_S,
                              overrides={"share_id": send.share_id, "due_at": send.due_at.isoformat()})
    return True


def delete_share(share: ReportShare) -> None:
    """Delete a share and its beat entry (the entry would otherwise keep firing for nothing)."""
    with transaction.atomic():
        task_id = share.periodic_task_id
        share.delete()
        if task_id:
            PeriodicTask.objects.filter(pk=task_id).delete()


def share_zone(share: ReportShare) -> ZoneInfo:
    return ZoneInfo(share.time_zone or "UTC")


def one_off_at(share: ReportShare) -> datetime | None:
    """A "now" share with a start date in the future is a one-off at that date and time."""
    if share.recurrence != Recurrence.NOW or share.start_date is None:
        return None
    moment = datetime.combine(share.start_date, share.send_time or time(0), tzinfo=share_zone(share))
    return moment if moment > timezone.now() else None


MONTH_WEEK_DAYS = {1: "1-7", 2: "8-14", 3: "15-21", 4: "22-28", 5: "22-31"}


def crontab_fields(share: ReportShare) -> dict[str, str]:
    """The share's crontab (django-celery-beat fields; cron's day of week has 0 = Sunday, the share's
    0 = Monday). Monthly by weekday runs on that weekday in the week's day range; the last week
    (5) also fires on days 22-28 and the task drops the ones that are not the last such weekday."""
    send_time = share.send_time or time(0)
    fields = {"minute": str(send_time.minute), "hour": str(send_time.hour),
              "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}
    cron_dow = str(((share.day_of_week or 0) + 1) % 7)
    if share.recurrence == Recurrence.WEEKLY:
        fields["day_of_week"] = cron_dow
    elif share.recurrence == Recurrence.MONTHLY_DAY:
        fields["day_of_month"] = str(share.day_of_month or 1)
    elif share.recurrence == Recurrence.MONTHLY_WEEKDAY:
        fields["day_of_week"] = cron_dow
        fields["day_of_month"] = MONTH_WEEK_DAYS[share.week_of_month or 1]
    elif share.recurrence == Recurrence.YEARLY:
        fields["day_of_month"] = str(share.day_of_month or 1)
        fields["month_of_year"] = str(share.month or 1)
    return fields


def sync_schedule(share: ReportShare) -> PeriodicTask | None:
    """Create, update or delete the share's own PeriodicTask (task ``workflows.reportSendingNow``
    with the share id, as the engine's :func:`campaign.workflow_runs.beat_message` builds it). Start
    and end dates become the task's start time and expiry."""
    zone = share_zone(share)
    clocked_at = one_off_at(share)
    if share.recurrence == Recurrence.NOW and clocked_at is None:
        if share.periodic_task_id:
            task = share.periodic_task
            ReportShare.objects.filter(pk=share.pk).update(periodic_task=None)
            share.periodic_task = None
            task.delete()
        return None
    schedule: dict = {"crontab": None, "clocked": None, "interval": None, "solar": None}
    if clocked_at is not None:
        schedule["clocked"], _ = ClockedSchedule.objects.get_or_create(clocked_time=clocked_at)
    else:
        schedule["crontab"], _ = CrontabSchedule.objects.get_or_create(**crontab_fields(share), timezone=share.time_zone or "UTC")
    values = {
        "name": f"report share #{share.pk}",
        **workflow_runs.beat_message(WORKFLOW_ID, requested_by=f"report share #{share.pk}",
                                     overrides={"share_id": share.pk}, wait_for_lease_s=WAIT_FOR_LEASE_S),
        "one_off": clocked_at is not None,
        "enabled": share.enabled,
        "start_time": (datetime.combine(share.start_date, time(0), tzinfo=zone)
                       if share.start_date and clocked_at is None else None),
        "expires": datetime.combine(share.end_date + timedelta(days=1), time(0), tzinfo=zone) if share.end_date else None,
        "description": f"Sends the report share #{share.pk} ({share.get_recurrence_display()}); managed from the share.",
        **schedule,
    }
    if share.periodic_task_id:
        task = share.periodic_task
        for name, value in values.items():
            setattr(task, name, value)
        task.save()
    else:
        task = PeriodicTask.objects.create(**values)
        ReportShare.objects.filter(pk=share.pk).update(periodic_task=task)
        share.periodic_task = task
    return task


# -- due times -----------------------------------------------------------------------------------

def _last_weekday_of_month(day: date) -> bool:
    return day.day + 7 > calendar.monthrange(day.year, day.month)[1]


def is_due_on(share: ReportShare, day: date) -> bool:
    """Does the share's recurrence fall on this local day (start and end dates included)?"""
    if share.start_date and day < share.start_date:
        return False
    if share.end_date and day > share.end_date:
        return False
    match share.recurrence:
        case Recurrence.DAILY:
            return True
        case Recurrence.WEEKLY:
            return day.weekday() == (share.day_of_week or 0)
        case Recurrence.MONTHLY_DAY:
            return day.day == (share.day_of_month or 1)
        case Recurrence.MONTHLY_WEEKDAY:
            if day.weekday() != (share.day_of_week or 0):
                return False
            week = share.week_of_month or 1
            return _last_weekday_of_month(day) if week == 5 else (day.day - 1) // 7 + 1 == week
        case Recurrence.YEARLY:
            return day.month == (share.month or 1) and day.day == (share.day_of_month or 1)
    return True


def latest_due(share: ReportShare, now: datetime) -> datetime:
    """The slot a scheduled trigger at ``now`` belongs to: today's send time in the share's zone,
    or yesterday's if that is still ahead (a retry after midnight keeps the same slot)."""
    zone = share_zone(share)
    local = now.astimezone(zone)
    slot = datetime.combine(local.date(), share.send_time or time(0), tzinfo=zone)
    if slot > local:
        slot -= timedelta(days=1)
        slot = datetime.combine(slot.date(), share.send_time or time(0), tzinfo=zone)
    return slot


def next_due_times(share: ReportShare, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` due times after ``after`` (for the admin and the tests), day by day over
    at most 10 years; stops at the end date."""
    zone = share_zone(share)
    local_day = after.astimezone(zone).date()
    found: list[datetime] = []
    for offset in range(3660 + 1):
        day = local_day + timedelta(days=offset)
        if share.end_date and day > share.end_date:
            break
        moment = datetime.combine(day, share.send_time or time(0), tzinfo=zone)
        if moment > after and is_due_on(share, day):
            found.append(moment)
            if len(found) == count:
                break
    return found


# -- sending -------------------------------------------------------------------------------------

def max_attachment_bytes() -> int:
    return int(getattr(settings, "REPORT_MAX_ATTACHMENT_BYTES", DEFAULT_MAX_ATTACHMENT_BYTES))


def site_url() -> str:
    """Base of the links in emails: SITE_URL, else https:// + the first allowed host."""
    base = settings.SITE_URL
    if not base:
        hosts = [host for host in settings.ALLOWED_HOSTS if host and host != "*"]
        base = f"https://{hosts[0].lstrip('.')}" if hosts else "http://localhost:8000"
    return base.rstrip("/")


def unsubscribe_token(share_id: int, user_id: int) -> str:
    return signing.TimestampSigner(salt=UNSUBSCRIBE_SALT).sign(f"{share_id}:{user_id}")


def read_unsubscribe_token(token: str) -> tuple[int, int]:
    """(share id, user id); signing.BadSignature (tampered) or SignatureExpired."""
    value = signing.TimestampSigner(salt=UNSUBSCRIBE_SALT).unsign(token, max_age=LINK_MAX_AGE_S)
    share_id, user_id = value.split(":")
    return int(share_id), int(user_id)


def download_token(send_id: int) -> str:
    return signing.TimestampSigner(salt=DOWNLOAD_SALT).sign(str(send_id))


def read_download_token(token: str) -> int:
    return int(signing.TimestampSigner(salt=DOWNLOAD_SALT).unsign(token, max_age=LINK_MAX_AGE_S))


def pdf_relative_path(share: ReportShare, due_at: datetime) -> str:
    stamp = due_at.astimezone(ZoneInfo("UTC")).strftime("%Y%m%dT%H%M%SZ")
    return f"reports/{share.pk}/{stamp}.pdf"


def claim(share: ReportShare, due_at: datetime, *, run_id: int | None = None) -> ReportSend | None:
    """Insert the send row (status rendering) or re-claim one whose attempt is known to have
    emailed nothing; None when another attempt owns this due time (sent, emailing, or rendering).

    Re-claimable: a ``failed`` row, and — when called by a reportSendingNow run (``run_id``) — a
    ``rendering`` row claimed by another run. Runs of that workflow never overlap (they share its
    lease), so that run died before it emailed anything. An ``emailing`` row is never re-claimed:
    its run may have died after the SMTP server accepted the messages (at most once).
    """
    try:
        with transaction.atomic():
            return ReportSend.objects.create(share=share, due_at=due_at, status=ReportSend.Status.RENDERING,
                                             claimed_by_run=run_id)
    except IntegrityError:
        pass
    reclaimable = Q(status=ReportSend.Status.FAILED)
    if run_id is not None:
        orphaned = Q(status=ReportSend.Status.RENDERING, claimed_by_run__isnull=False) & ~Q(claimed_by_run=run_id)
        reclaimable |= orphaned
    row = ReportSend.objects.filter(share=share, due_at=due_at)
    previous = row.values_list("status", "claimed_by_run").first()
    with transaction.atomic():  # conditional: of two attempts re-claiming at once, one wins
        reclaimed = row.filter(reclaimable).update(status=ReportSend.Status.RENDERING, error="", claimed_by_run=run_id)
    if not reclaimed:
        return None
    log.info("share #%s due %s re-claimed by run #%s (was %s, run #%s)", share.pk, due_at.isoformat(), run_id, *previous)
    return row.get()


def send_share(share: ReportShare, due_at: datetime, *, run_id: int | None = None) -> ReportSend | None:
    """Render, store and email one share for one due time, at most once. Returns the send row, or
    None when this due time was already taken. ``run_id``: the reportSendingNow run sending it."""
    send = claim(share, due_at, run_id=run_id)
    if send is None:
        return None
    try:
        recipients = list(share.recipients.filter(is_active=True).exclude(email="").order_by("pk"))
        if not recipients:
            raise ValueError("no recipient with an email address")
        report = share.report
        period = reports.report_period(report, due_at.astimezone(share_zone(share)).date())
        figures = reports.collect_figures(report, period)
        pdf = reports.render_report_pdf(report, period, figures=figures)
        relative = pdf_relative_path(share, due_at)
        target = Path(settings.MEDIA_ROOT) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(pdf)
        send.pdf_path, send.pdf_bytes = relative, len(pdf)
        messages = [build_email(share, send, figures, pdf, user) for user in recipients]
    except Exception as error:  # recorded on the row (nothing was emailed yet), then re-raised for the run
        ReportSend.objects.filter(pk=send.pk).update(status=ReportSend.Status.FAILED, error=f"{type(error).__name__}: {error}")
        raise
    # From here on a crash leaves the row "emailing": the messages may have left, so no attempt
    # sends them again unless a person decides to (docs/workflows/reportSendingNow.md).
    ReportSend.objects.filter(pk=send.pk).update(status=ReportSend.Status.EMAILING, pdf_path=relative, pdf_bytes=len(pdf))
    try:
        get_connection().send_messages(messages)
    except Exception as error:  # SMTP refused: nothing (or part) went out; the row says why
        ReportSend.objects.filter(pk=send.pk).update(status=ReportSend.Status.FAILED,
                                                     error=f"email: {type(error).__name__}: {error}")
        raise
    now = timezone.now()
    ReportSend.objects.filter(pk=send.pk).update(status=ReportSend.Status.SENT, sent_at=now)
    send.status, send.sent_at = ReportSend.Status.SENT, now
    return send


def build_email(share: ReportShare, send: ReportSend, figures: reports.Figures, pdf: bytes, user) -> EmailMessage:
    report = share.report
    totals, rates = figures.totals, figures.rates
    lines = [
        f"Hello {user.get_full_name() or user.get_username()},",
        "",
        f"{report.label} for {figures.period.label()} ({reports.instance_name()}):",
        (f"  processed/sent {totals['sent']}, delivered {totals['delivered']} ({rates['delivered_rate']} %), "
         f"bounces + errors {totals['bounces']}"),
        (f"  open rate {rates['open_rate']} %, unique open rate {rates['unique_open_rate']} %, "
         f"click through rate {rates['click_through_rate']} %"),
        "",
    ]
    oversized = len(pdf) > max_attachment_bytes()
    if oversized:
        link = site_url() + reverse("reports:download", args=[download_token(send.pk)])
        lines += [f"The PDF ({len(pdf) // 1024} KB) is too large to attach; download it here:", link, ""]
    else:
        lines += ["The full report is attached as a PDF.", ""]
    if share.recurrence != Recurrence.NOW:
        link = site_url() + reverse("reports:unsubscribe", args=[unsubscribe_token(share.pk, user.pk)])
        lines += ["You receive this report on a schedule. To stop receiving it:", link]
    message = EmailMessage(
        subject=f"[{reports.instance_name()}] {report.label} - {figures.period.label()}",
        body="\n".join(lines),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[user.email],
    )
    if not oversized:
        message.attach(Path(send.pdf_path).name if send.pdf_path else "report.pdf", pdf, "application/pdf")
    return message
