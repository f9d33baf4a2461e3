"""reportSendingNow: one email per recipient and due time with the PDF attached, never twice;
oversized PDFs as links; signed unsubscribe links; recipients limited to users; schedules."""

from __future__ import annotations

import re
import time as clock
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab as celery_crontab
from django.contrib.auth.models import Permission
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.urls import reverse

from campaign import report_shares
from campaign.admin import ReportShareForm
from campaign.models import Channel, ReportSend, ReportShare
from tests.factories import (
    DeliveryAggregateFactory,
    DeliveryFactory,
    ReportFactory,
    StaffUserFactory,
    SuperUserFactory,
    UserFactory,
)
from tests.workflows.helpers import TEST_LEASE_SECONDS, wait_for
from workflows import commands
from workflows.engine import RunRequest, execute
from workflows.models import RunStatus, WorkflowRun
from workflows.worker_process import WorkerProcess, current_database_url

WORKFLOW_ID = "reportSendingNow"
PARIS = ZoneInfo("Europe/Paris")
Recurrence = ReportShare.Recurrence
#: Imported by a test worker only (never here: it slows rendering in the process that imports it).
SLOW_RENDER_MODULE = "tests.workflows.slow_render"


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.ALLOWED_HOSTS = ["reports.example.org", "testserver"]
    return settings.MEDIA_ROOT


@pytest.fixture
def report(db):
    delivery = DeliveryFactory(label="Newsletter", channel=Channel.EMAIL)
    yesterday = date.today() - timedelta(days=1)
    DeliveryAggregateFactory(delivery=delivery, day=yesterday, sent=321, delivered=300, bounces=21, unique_opens=150,
                             unique_clicks=30)
    return ReportFactory(label="Daily KPIs", period_days=7)


def make_share(report, users, **fields) -> ReportShare:
    share = ReportShare.objects.create(report=report, **fields)
    share.recipients.set(users)
    return share


def run(**overrides) -> object:
    finished = commands.run_now(WORKFLOW_ID, actor="test", sync=True, overrides=overrides)
    assert finished.status == RunStatus.SUCCEEDED, finished.reason
    return finished


def test_send_now_share_emails_each_recipient_the_pdf(media, report) -> None:
    alice, bob = UserFactory(email="alice@example.com"), UserFactory(email="bob@example.com")
    share = make_share(report, [alice, bob])
    run(share_id=share.pk)
    assert sorted(message.to[0] for message in mail.outbox) == ["alice@example.com", "bob@example.com"]
    message = mail.outbox[0]
    assert "Daily KPIs" in message.subject
    assert "sent 321, delivered 300" in message.body
    [(name, content, mimetype)] = message.attachments
    assert mimetype == "application/pdf" and name.endswith(".pdf") and content.startswith(b"%PDF-")
    assert "unsubscribe" not in message.body  # only recurring emails carry the link
    send = ReportSend.objects.get(share=share)
    assert send.status == ReportSend.Status.SENT and send.due_at == share.created_at and send.sent_at
    stored = Path(media) / send.pdf_path
    assert send.pdf_path.startswith(f"reports/{share.pk}/") and stored.read_bytes() == content
    assert send.pdf_bytes == len(content)


def test_second_trigger_for_the_same_due_time_sends_nothing(media, report) -> None:
    share = make_share(report, [UserFactory()])
    run(share_id=share.pk)
    second = run(share_id=share.pk)
    run()  # the catch-up pass: this share has a send, so nothing
    assert len(mail.outbox) == 1
    assert ReportSend.objects.filter(share=share).count() == 1
    assert second.activities.get().counters == {"duplicates": 1}


def test_a_send_in_progress_outside_a_run_is_not_sent_again(media, report) -> None:
    share = make_share(report, [UserFactory()], recurrence=Recurrence.DAILY, send_time=time(8))
    due = datetime(2026, 3, 2, 8, tzinfo=PARIS)
    ReportSend.objects.create(share=share, due_at=due, status=ReportSend.Status.RENDERING)
    run(share_id=share.pk, due_at=due.isoformat())
    assert mail.outbox == []


def test_a_send_left_rendering_by_a_run_that_died_is_taken_over_and_sent_once(media, report) -> None:
    share = make_share(report, [UserFactory(email="carol@example.com")], recurrence=Recurrence.DAILY, send_time=time(8))
    due = datetime(2026, 3, 2, 8, tzinfo=PARIS)
    dead = run(share_id=0)  # any earlier run: runs of the workflow never overlap, so it is not rendering now
    ReportSend.objects.create(share=share, due_at=due, status=ReportSend.Status.RENDERING, claimed_by_run=dead.pk)

    taker = run(share_id=share.pk, due_at=due.isoformat())
    again = run(share_id=share.pk, due_at=due.isoformat())

    assert [message.to for message in mail.outbox] == [["carol@example.com"]]
    send = ReportSend.objects.get(share=share)
    assert (send.status, send.claimed_by_run) == (ReportSend.Status.SENT, taker.pk)
    assert taker.activities.get().counters == {"sent": 1}
    assert again.activities.get().counters == {"duplicates": 1}


def test_a_send_interrupted_while_emailing_is_never_sent_again(media, report) -> None:
    share = make_share(report, [UserFactory()], recurrence=Recurrence.DAILY, send_time=time(8))
    due = datetime(2026, 3, 2, 8, tzinfo=PARIS)
    dead = run(share_id=0)
    ReportSend.objects.create(share=share, due_at=due, status=ReportSend.Status.EMAILING, claimed_by_run=dead.pk)
    rerun = run(share_id=share.pk, due_at=due.isoformat())
    assert mail.outbox == []  # the messages may have left before the crash: at most once
    assert rerun.activities.get().counters == {"duplicates": 1}
    assert ReportSend.objects.get(share=share).status == ReportSend.Status.EMAILING


def test_a_send_is_emailing_while_its_messages_are_handed_over(media, report, monkeypatch) -> None:
    share = make_share(report, [UserFactory()])
    seen = []

    class Watching(LocmemBackend):
        def send_messages(self, messages):
            seen.append(ReportSend.objects.get(share=share).status)
            return super().send_messages(messages)

    monkeypatch.setattr(report_shares, "get_connection", Watching)
    run(share_id=share.pk)
    assert seen == [ReportSend.Status.EMAILING]
    assert ReportSend.objects.get(share=share).status == ReportSend.Status.SENT


def test_a_failed_send_is_retried_by_the_next_trigger(media, report, monkeypatch) -> None:
    share = make_share(report, [UserFactory()], recurrence=Recurrence.DAILY, send_time=time(8))
    due = datetime(2026, 3, 2, 8, tzinfo=PARIS)

    def broken(*args, **kwargs) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(report_shares.reports, "render_report_pdf", broken)
    failed = commands.run_now(WORKFLOW_ID, actor="test", sync=True, overrides={"share_id": share.pk, "due_at": due.isoformat()})
    assert failed.status == RunStatus.FAILED
    assert ReportSend.objects.get(share=share).status == ReportSend.Status.FAILED
    monkeypatch.undo()
    run(share_id=share.pk, due_at=due.isoformat())
    run(share_id=share.pk, due_at=due.isoformat())
    assert len(mail.outbox) == 1
    assert ReportSend.objects.get(share=share).status == ReportSend.Status.SENT


def test_oversized_pdf_is_sent_as_a_link(media, report, settings, client) -> None:
    settings.REPORT_MAX_ATTACHMENT_BYTES = 1000
    share = make_share(report, [UserFactory()])
    run(share_id=share.pk)
    [message] = mail.outbox
    assert message.attachments == []
    [link] = re.findall(r"https://reports\.example\.org(/reports/download/\S+/)", message.body)
    response = client.get(link)
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    assert b"".join(response.streaming_content).startswith(b"%PDF-")
    assert client.get(link.replace("/download/", "/download/x")).status_code == 404


def test_links_start_with_site_url_else_the_first_allowed_host(settings) -> None:
    settings.ALLOWED_HOSTS = ["reports.example.org", "testserver"]
    settings.SITE_URL = ""
    assert report_shares.site_url() == "https://reports.example.org"
    settings.SITE_URL = "http://10.0.0.5:8000/campaign/"
    assert report_shares.site_url() == "http://10.0.0.5:8000/campaign"


def test_recurring_email_unsubscribe_link_confirms_then_removes(media, report, client) -> None:
    alice, bob = UserFactory(), UserFactory()
    share = make_share(report, [alice, bob], recurrence=Recurrence.WEEKLY, day_of_week=0, send_time=time(8))
    run(share_id=share.pk, due_at=datetime(2026, 3, 2, 8, tzinfo=PARIS).isoformat())
    alice_mail = next(message for message in mail.outbox if message.to == [alice.email])
    [link] = re.findall(r"https://reports\.example\.org(/reports/unsubscribe/\S+/)", alice_mail.body)
    page = client.get(link)
    assert page.status_code == 200 and b"Unsubscribe?" in page.content
    assert share.recipients.filter(pk=alice.pk).exists()  # GET alone changes nothing
    done = client.post(link)
    assert done.status_code == 200 and b"Unsubscribed" in done.content
    assert list(share.recipients.all()) == [bob]


def test_tampered_unsubscribe_link_is_refused(media, report, client) -> None:
    alice, bob = UserFactory(), UserFactory()
    share = make_share(report, [alice, bob], recurrence=Recurrence.WEEKLY, day_of_week=0, send_time=time(8))
    token = report_shares.unsubscribe_token(share.pk, alice.pk)
    forged = token.replace(f"{share.pk}:{alice.pk}", f"{share.pk}:{bob.pk}", 1)
    response = client.post(reverse("reports:unsubscribe", args=[forged]))
    assert response.status_code == 400 and b"not valid" in response.content
    assert set(share.recipients.all()) == {alice, bob}


def test_create_share_triggers_the_workflow_on_commit(media, report, django_capture_on_commit_callbacks, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(commands, "run_now", lambda workflow_id, **kwargs: calls.append((workflow_id, kwargs)))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        share = report_shares.create_share(report=report, recipients=[UserFactory()])
    assert calls == []  # nothing before commit
    for callback in callbacks:
        callback()
    assert [(workflow_id, kwargs["overrides"]) for workflow_id, kwargs in calls] == [(WORKFLOW_ID, {"share_id": share.pk})]
    assert share.periodic_task is None


def test_recurring_share_gets_its_own_crontab_in_its_time_zone(media, report) -> None:
    share = report_shares.create_share(report=report, recipients=[UserFactory()], recurrence=Recurrence.WEEKLY,
                                       day_of_week=0, send_time=time(7, 30), time_zone="Europe/Paris",
                                       start_date=date(2026, 1, 1), end_date=date(2026, 6, 30))
    task = ReportShare.objects.get(pk=share.pk).periodic_task
    assert task.task == "workflows.reportSendingNow" and '"share_id": ' + str(share.pk) in task.kwargs
    cron = task.crontab
    assert (cron.minute, cron.hour, cron.day_of_week, cron.day_of_month, str(cron.timezone)) \
        == ("30", "7", "1", "*", "Europe/Paris")
    assert task.expires == datetime(2026, 7, 1, tzinfo=PARIS)
    share.recurrence = Recurrence.NOW
    share.save()
    report_shares.sync_schedule(share)
    assert ReportShare.objects.get(pk=share.pk).periodic_task is None


def test_future_send_now_share_is_a_one_off_clocked_task(media, report) -> None:
    share = report_shares.create_share(report=report, recipients=[UserFactory()], start_date=date.today() + timedelta(days=3),
                                       send_time=time(9), time_zone="Europe/Paris")
    task = ReportShare.objects.get(pk=share.pk).periodic_task
    assert task.one_off and task.clocked.clocked_time == datetime.combine(share.start_date, time(9), tzinfo=PARIS)


def _crontab_fires(share: ReportShare, start: datetime, end: datetime) -> list[datetime]:
    """Celery's own crontab (as beat evaluates it), minute by minute over the send times only."""
    fields = report_shares.crontab_fields(share)
    schedule = celery_crontab(minute=fields["minute"], hour=fields["hour"], day_of_week=fields["day_of_week"],
                              day_of_month=fields["day_of_month"], month_of_year=fields["month_of_year"])
    zone = ZoneInfo(share.time_zone)
    fires, day = [], start.date()
    while day <= end.date():
        moment = datetime.combine(day, share.send_time, tzinfo=zone)
        cron_dow = (moment.weekday() + 1) % 7
        if (moment.day in schedule.day_of_month and moment.month in schedule.month_of_year
                and cron_dow in schedule.day_of_week and start < moment <= end):
            fires.append(moment)
        day += timedelta(days=1)
    return fires


@pytest.mark.parametrize(("fields", "first"), [
    ({"recurrence": Recurrence.DAILY}, ["2026-01-01", "2026-01-02", "2026-01-03"]),
    ({"recurrence": Recurrence.WEEKLY, "day_of_week": 4}, ["2026-01-02", "2026-01-09", "2026-01-16"]),
    ({"recurrence": Recurrence.MONTHLY_DAY, "day_of_month": 31}, ["2026-01-31", "2026-03-31", "2026-05-31"]),
    ({"recurrence": Recurrence.MONTHLY_WEEKDAY, "day_of_week": 0, "week_of_month": 2},
     ["2026-01-12", "2026-02-09", "2026-03-09"]),
    ({"recurrence": Recurrence.MONTHLY_WEEKDAY, "day_of_week": 6, "week_of_month": 5},
     ["2026-01-25", "2026-02-22", "2026-03-29"]),
    ({"recurrence": Recurrence.YEARLY, "day_of_month": 29, "month": 3}, ["2026-03-29"]),
])
def test_due_times_over_a_year_match_the_beat_crontab(db, fields, first) -> None:
    share = ReportShare(report=ReportFactory(), send_time=time(2, 30), time_zone="Europe/Paris", end_date=date(2026, 12, 31),
                        **fields)
    start = datetime(2025, 12, 31, 12, tzinfo=PARIS)
    due = report_shares.next_due_times(share, start, 400)
    assert [moment.date().isoformat() for moment in due[:3]] == first
    assert due[-1].date() <= date(2026, 12, 31)  # the end date is respected
    fires = _crontab_fires(share, start, datetime(2027, 1, 1, tzinfo=PARIS))
    if fields.get("week_of_month") == 5:
        # The crontab fires on every weekday of days 22-31; the task keeps the last one of the month.
        assert set(due) < set(fires) and all(report_shares.is_due_on(share, f.date()) == (f in due) for f in fires)
    else:
        assert due == fires
    # 2026-03-29 is the spring DST change in Paris: 02:30 does not exist, the slot still falls that day.
    for moment in due:
        assert moment.tzinfo == PARIS and moment.time() == time(2, 30)


def test_scheduled_trigger_uses_the_current_slot_and_skips_non_due_days(media, report, time_machine) -> None:
    share = make_share(report, [UserFactory()], recurrence=Recurrence.MONTHLY_WEEKDAY, day_of_week=6, week_of_month=5,
                       send_time=time(9), time_zone="Europe/Paris")
    time_machine.move_to(datetime(2026, 3, 22, 9, 1, tzinfo=PARIS), tick=False)  # a Sunday, not the last of March
    run(share_id=share.pk)
    assert mail.outbox == [] and not ReportSend.objects.exists()
    time_machine.move_to(datetime(2026, 3, 29, 9, 1, tzinfo=PARIS), tick=False)  # the last Sunday (DST day)
    run(share_id=share.pk)
    time_machine.move_to(datetime(2026, 3, 29, 9, 20, tzinfo=PARIS), tick=False)  # a retried task: same slot
    run(share_id=share.pk)
    assert len(mail.outbox) == 1
    assert ReportSend.objects.get().due_at == datetime(2026, 3, 29, 9, tzinfo=PARIS)


def test_end_date_stops_scheduled_sends(media, report, time_machine) -> None:
    share = make_share(report, [UserFactory()], recurrence=Recurrence.DAILY, send_time=time(9), end_date=date(2026, 3, 1))
    time_machine.move_to(datetime(2026, 3, 2, 9, 1, tzinfo=ZoneInfo("UTC")), tick=False)
    run(share_id=share.pk)
    assert mail.outbox == []


def test_admin_form_refuses_addresses_of_non_users(db, report) -> None:
    member = UserFactory(email="member@example.com")
    base = {"report": report.pk, "recurrence": Recurrence.NOW, "time_zone": "UTC", "enabled": "on"}
    refused = ReportShareForm(data={**base, "addresses": "Member@example.com, stranger@example.org"})
    assert not refused.is_valid()
    assert "stranger@example.org" in str(refused.errors["addresses"])
    assert "Not users of this instance" in str(refused.errors["addresses"])
    accepted = ReportShareForm(data={**base, "addresses": "Member@Example.com"})
    assert accepted.is_valid(), accepted.errors
    assert accepted.cleaned_data["recipients"] == [member]


def test_admin_add_saves_recipients_and_triggers_once(db, report, client, django_capture_on_commit_callbacks,
                                                      monkeypatch) -> None:
    from tests.factories import SuperUserFactory

    admin_user = SuperUserFactory()
    member = UserFactory(email="member@example.com")
    client.force_login(admin_user)
    calls = []
    monkeypatch.setattr(report_shares, "trigger_send", lambda **kwargs: calls.append(kwargs))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("admin:campaign_reportshare_add"), {
            "report": report.pk, "addresses": "member@example.com", "recurrence": Recurrence.NOW, "time_zone": "UTC",
            "enabled": "on",
        })
    assert response.status_code == 302, response.content.decode()[:2000]
    share = ReportShare.objects.get()
    assert list(share.recipients.all()) == [member] and share.created_by == admin_user
    assert calls == [{"share_id": share.pk}]


class _Inbox:
    """An aiosmtpd handler keeping every message it accepted."""

    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd's hook
        import email
        from email import policy

        self.messages.append((envelope.rcpt_tos, email.message_from_bytes(envelope.content, policy=policy.default)))
        return "250 OK"


@pytest.fixture
def smtp_server(settings):
    import socket

    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    yield inbox
    controller.stop()


def test_real_smtp_server_receives_one_email_with_the_pdf_despite_duplicates(media, report, smtp_server) -> None:
    alice = UserFactory(email="alice@example.com")
    share = make_share(report, [alice], recurrence=Recurrence.DAILY, send_time=time(8), time_zone="Europe/Paris")
    due = datetime(2026, 3, 2, 8, tzinfo=PARIS).isoformat()
    for _ in range(3):  # the beat tick, a duplicate trigger and a retried task for the same slot
        run(share_id=share.pk, due_at=due)
    [(recipients, message)] = smtp_server.messages
    assert recipients == ["alice@example.com"]
    [attachment] = list(message.iter_attachments())
    assert attachment.get_content_type() == "application/pdf" and attachment.get_content().startswith(b"%PDF-")
    assert "/reports/unsubscribe/" in message.get_body(("plain",)).get_content()


def test_paused_workflow_does_not_break_saving_a_send_now_share(media, report, django_capture_on_commit_callbacks) -> None:
    commands.pause(WORKFLOW_ID, actor="test")
    with django_capture_on_commit_callbacks(execute=True):
        share = report_shares.create_share(report=report, recipients=[UserFactory()])
    assert not ReportSend.objects.filter(share=share).exists()
    commands.resume(WORKFLOW_ID, actor="test")
    run()  # the catch-up pass sends the shares that were missed
    assert ReportSend.objects.get(share=share).status == ReportSend.Status.SENT and len(mail.outbox) == 1


def test_deleting_a_share_deletes_its_beat_entry(media, report) -> None:
    from django_celery_beat.models import PeriodicTask

    share = report_shares.create_share(report=report, recipients=[UserFactory()], recurrence=Recurrence.DAILY, send_time=time(6))
    task_id = ReportShare.objects.get(pk=share.pk).periodic_task_id
    assert PeriodicTask.objects.filter(pk=task_id).exists()
    report_shares.delete_share(ReportShare.objects.get(pk=share.pk))
    assert not PeriodicTask.objects.filter(pk=task_id).exists()


def test_send_again_in_the_admin_releases_an_interrupted_send_and_its_run_sends_it(media, report, client) -> None:
    share = make_share(report, [UserFactory(email="erin@example.com")], recurrence=Recurrence.DAILY, send_time=time(8))
    due = datetime(2026, 3, 2, 8, tzinfo=PARIS)
    interrupted = ReportSend.objects.create(share=share, due_at=due, status=ReportSend.Status.EMAILING, claimed_by_run=1)
    delivered = ReportSend.objects.create(share=share, due_at=due + timedelta(days=1), status=ReportSend.Status.SENT)
    admin = SuperUserFactory(username="ops")
    client.force_login(admin)

    response = client.post(reverse("admin:campaign_reportsend_changelist"), {
        "action": "send_again", "_selected_action": [interrupted.pk, delivered.pk],
    }, follow=True)

    shown = [str(message) for message in response.context["messages"]]
    assert shown[0] == "1 send(s) queued again."
    assert shown[1].startswith("Left as they are: ") and "is sent" in shown[1]
    interrupted.refresh_from_db()
    assert (interrupted.status, interrupted.error) == (ReportSend.Status.FAILED, "released for a resend by ops")
    queued = WorkflowRun.objects.get(workflow_id=WORKFLOW_ID, status=RunStatus.QUEUED)
    assert queued.overrides == {"share_id": share.pk, "due_at": "2026-03-02T07:00:00+00:00"} and queued.requested_by == "ops"

    done = execute(RunRequest(workflow_id=WORKFLOW_ID, trigger=queued.trigger, run_id=queued.pk))

    assert done.status == RunStatus.SUCCEEDED, done.reason
    assert [message.to for message in mail.outbox] == [["erin@example.com"]]
    assert ReportSend.objects.get(pk=interrupted.pk).status == ReportSend.Status.SENT
    assert ReportSend.objects.get(pk=delivered.pk).status == ReportSend.Status.SENT


def test_send_again_on_a_paused_workflow_says_so_and_leaves_the_send_as_it_was(media, report, client) -> None:
    share = make_share(report, [UserFactory()])
    interrupted = ReportSend.objects.create(share=share, due_at=share.created_at, status=ReportSend.Status.EMAILING)
    commands.pause(WORKFLOW_ID, actor="test")
    client.force_login(SuperUserFactory())

    response = client.post(reverse("admin:campaign_reportsend_changelist"),
                           {"action": "send_again", "_selected_action": [interrupted.pk]}, follow=True)

    assert [str(message) for message in response.context["messages"]] == [
        f"Not sent again: {WORKFLOW_ID} is paused; resume it first, or force the run."]
    assert ReportSend.objects.get(pk=interrupted.pk).status == ReportSend.Status.EMAILING
    assert not WorkflowRun.objects.filter(workflow_id=WORKFLOW_ID).exists()


def test_report_send_list_links_each_send_to_the_run_that_claimed_it(media, report, client) -> None:
    share = make_share(report, [UserFactory()])
    sent = run(share_id=share.pk)
    client.force_login(SuperUserFactory())

    page = client.get(reverse("admin:campaign_reportsend_changelist"))

    assert reverse("admin:workflows_workflowrun_change", args=[sent.pk]) in page.content.decode()


def test_send_again_needs_the_change_permission_on_report_sends(media, report, client) -> None:
    share = make_share(report, [UserFactory()])
    ReportSend.objects.create(share=share, due_at=share.created_at, status=ReportSend.Status.FAILED)
    viewer = StaffUserFactory()
    viewer.user_permissions.add(Permission.objects.get(codename="view_reportsend"))
    client.force_login(viewer)

    page = client.get(reverse("admin:campaign_reportsend_changelist"))

    assert page.status_code == 200
    assert b'value="send_again"' not in page.content


@pytest.mark.worker
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_worker_killed_while_rendering_leaves_a_send_the_next_trigger_takes_over(settings, tmp_path) -> None:
    settings.WORKFLOW_LEASE_SECONDS = TEST_LEASE_SECONDS
    settings.MEDIA_ROOT = tmp_path / "media"
    delivery = DeliveryFactory(label="Newsletter", channel=Channel.EMAIL)
    DeliveryAggregateFactory(delivery=delivery, day=date.today() - timedelta(days=1), sent=10, delivered=9, bounces=1)
    report = ReportFactory(label="Daily KPIs", period_days=7)
    share = make_share(report, [UserFactory(email="dana@example.com")], recurrence=Recurrence.DAILY, send_time=time(8))
    due = datetime(2026, 3, 2, 8, tzinfo=PARIS)

    worker = WorkerProcess(queues=["celery"], env={
        "SECRET_KEY": settings.SECRET_KEY, "DATABASE_URL": current_database_url(),
        "WORKFLOW_LEASE_SECONDS": str(TEST_LEASE_SECONDS), "WORKFLOW_EXTRA_MODULES": SLOW_RENDER_MODULE,
        "SLOW_RENDER_S": "60",
    }).start()
    try:
        dead = commands.run_now(WORKFLOW_ID, actor="test", overrides={"share_id": share.pk, "due_at": due.isoformat()})
        wait_for(lambda: ReportSend.objects.filter(share=share, status=ReportSend.Status.RENDERING).exists(),
                 what="the worker to claim the send and start rendering")
        worker.kill()
    finally:
        worker.stop()
    assert ReportSend.objects.get(share=share).claimed_by_run == dead.pk
    assert mail.outbox == []

    clock.sleep(TEST_LEASE_SECONDS + 0.5)  # the dead run's lease expires
    taker = run(share_id=share.pk, due_at=due.isoformat())
    run(share_id=share.pk, due_at=due.isoformat())  # a later duplicate trigger sends nothing

    assert [message.to for message in mail.outbox] == [["dana@example.com"]]
    send = ReportSend.objects.get(share=share)
    assert (send.status, send.claimed_by_run) == (ReportSend.Status.SENT, taker.pk)
    assert WorkflowRun.objects.get(pk=dead.pk).status == RunStatus.FAILED, "marked abandoned by the takeover"

