"""The simulation's last writes: the raw rows, the quarantine, a shared audience, a report share,
and the fields only known once every message is sent.

Why it exists: these rows summarise the whole simulation (the quarantine as it ended, raw rows in
arrival order, each delivery's end time), so they are written after it; and ``bulk_create``
stamps ``auto_now`` fields with the wall clock, which is pinned back here to the data's time line.
"""

from __future__ import annotations

from datetime import time as time_of_day
from datetime import timedelta

from django.db.models import F
from django.db.models.functions import Coalesce

from campaign.demo.parameters import SHARE_VISITORS_IN_AUDIENCE
from campaign.demo.state import DeliveryPlan, SimulationState
from campaign.demo.vocabulary import SMS_SHORT_CODE
from campaign.demo.writer import update_in_chunks
from campaign.models import (
    AudienceMember,
    Channel,
    Delivery,
    ExternalAccount,
    InboundSms,
    Profile,
    Quarantine,
    Report,
    ReportShare,
    SendingFeedback,
    SharedAudience,
    TrackingHit,
)


class Finishing(SimulationState):
    """Raw rows, quarantine, audience and report; delivery end times and consolidated opt-outs."""

    def _write_raw_rows(self) -> None:
        """Raw rows in arrival order, as the sending and tracking sides append them."""
        self.raw_feedback.sort(key=lambda row: (row[0], row[1]))
        for received_at, log_id, outcome, text in self.raw_feedback:
            self.writer.add(SendingFeedback(delivery_log_id=log_id, outcome=outcome, error_text=text, received_at=received_at))
        self.raw_hits.sort(key=lambda row: (row[0], row[1], row[2]))
        for hit_at, log_id, url_type, url, user_agent in self.raw_hits:
            self.writer.add(TrackingHit(delivery_log_id=log_id, url_type=url_type, url=url, user_agent=user_agent, hit_at=hit_at))
        self.raw_replies.sort()
        for received_at, phone, text in self.raw_replies:
            self.writer.add(InboundSms(phone=phone, text=text, short_code=SMS_SHORT_CODE, received_at=received_at))

    def _write_quarantine(self) -> None:
        self.writer.add_all(state.to_model() for state in self.quarantine.values())
        self.writer.flush(Quarantine)
        # bulk_create stamped updated_at (auto_now) with the wall clock; the table was empty before.
        Quarantine.objects.update(updated_at=F("last_error_at"))

    def _write_audience(self) -> None:
        """A shared audience as its last hourly import left it, an hour ago."""
        account = ExternalAccount.objects.get(name="audience")
        imported_at = self.anchor - timedelta(hours=1)
        visitors = self.recipients.with_visitor_id
        chosen = sorted(self.rng.sample(visitors, round(len(visitors) * SHARE_VISITORS_IN_AUDIENCE)))
        audience = SharedAudience(
            id=self.ids.take(SharedAudience), name="Web visitors - high purchase intent", external_id="aud-7f3c21",
            account=account, enabled=True,
            imported_at=imported_at, member_count=len(chosen), unknown_count=self.rng.randint(5, 60),
        )
        audience.save(force_insert=True)
        self.writer.counts["SharedAudience"] += 1
        matched_by = str(AudienceMember.IdType.VISITOR)
        for index in chosen:
            self.writer.add_row(AudienceMember, (audience.id, self.recipients.ids[index], matched_by, imported_at))

    def _write_report(self) -> None:
        created_at = self.anchor - timedelta(days=20)
        report = Report(
            id=self.ids.take(Report), label="Email KPIs - last 7 days", kind=Report.Kind.DELIVERY_KPIS, period_days=7,
            created_by=self.user, created_at=created_at,
        )
        report.save(force_insert=True)
        # Weekly, Mondays at 08:00: its schedule (a beat entry) is the report-sharing code's to create.
        share = ReportShare(
            id=self.ids.take(ReportShare), report=report, recurrence=ReportShare.Recurrence.WEEKLY, send_time=time_of_day(8, 0),
            time_zone="UTC", day_of_week=0, start_date=created_at.date(), created_by=self.user, created_at=created_at,
        )
        share.save(force_insert=True)
        share.recipients.set([self.user])
        self.writer.counts["Report"] += 1
        self.writer.counts["ReportShare"] += 1

    def _finish_deliveries(self, plans: list[DeliveryPlan]) -> None:
        """Set what the simulation decided (end times) and pin updated_at, which bulk_create stamped."""
        for plan in plans:
            if plan.state == Delivery.State.FINISHED and plan.finished_at is None:
                plan.finished_at = plan.last_final_at or plan.validity_end
        deliveries = [plan.to_model() for plan in plans]
        Delivery.objects.bulk_update(deliveries, ["finished_at"], batch_size=500)
        Delivery.objects.filter(id__in=[plan.id for plan in plans]).update(
            updated_at=Coalesce(F("finished_at"), F("started_at"), F("created_at")),
        )

    def _finish_profiles(self) -> None:
        """Opt-outs consolidated during the simulation (updated by updateDeliveryExecInfo's last run)."""
        ids = self.recipients.ids
        for channel, flag in ((Channel.EMAIL, "blocklisted_email"), (Channel.SMS, "blocklisted_sms")):
            opted_out = [ids[index] for index in sorted(self.opted_out[channel])]
            update_in_chunks(Profile.objects.all(), opted_out, **{flag: True, "updated_at": self.cutoff})

