"""How each channel's provider answers and how its recipients react, for the simulation.

Why it exists: the channels differ in throughput, feedback delay, validity, deferrals and
engagement; these behaviours decide the shape of every delivery's logs and tracking rows, so
they are stated once, per channel, with the rates they aim at.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from campaign.demo.bounces import EMAIL_REFUSED, EMAIL_UNQUALIFIED, EMAIL_UNREACHABLE, SMS_ABSENT, Bounce
from campaign.models import Channel


@dataclass(frozen=True)
class ChannelBehaviour:
    """How a channel's provider answers and how its recipients react."""

    messages_per_hour: int
    feedback_delay_mean_s: float  # between sending and the provider's answer
    validity: timedelta  # pending messages are cancelled after it
    deferral_share: float  # first attempt refused temporarily, retried later
    deferral_texts: tuple[str, ...]
    transient_bounces: tuple[tuple[tuple[Bounce, ...], float], ...]  # per message, whatever the address
    engaged_share: float  # recipients who react at all (open, click...) among delivered
    records_opens: bool
    click_given_engaged: float
    opt_out_given_engaged: float
    mirror_given_engaged: float


CHANNELS: dict[str, ChannelBehaviour] = {
    Channel.EMAIL: ChannelBehaviour(
        messages_per_hour=120_000, feedback_delay_mean_s=25.0, validity=timedelta(days=3),
        deferral_share=0.03,
        deferral_texts=(
            "421 4.7.0 Try again later, closing connection.",
            ("450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional "
             "messages from being delivered."),
            "451 4.7.1 Greylisting in action, please come back later",
        ),
        transient_bounces=((EMAIL_REFUSED, 0.006), (EMAIL_UNREACHABLE, 0.006), (EMAIL_UNQUALIFIED, 0.001)),
        # Unique open rate ~15-30% of delivered; click ~3% (0.22 x 0.15); opt-out ~0.2%.
        engaged_share=0.22, records_opens=True,
        click_given_engaged=0.15, opt_out_given_engaged=0.01, mirror_given_engaged=0.004,
    ),
    Channel.SMS: ChannelBehaviour(
        messages_per_hour=30_000, feedback_delay_mean_s=8.0, validity=timedelta(days=1),
        deferral_share=0.02, deferral_texts=("SMPP 0x00000058 ESME_RTHROTTLED: Throttling error, retrying",),
        transient_bounces=((SMS_ABSENT, 0.01),),
        # Short-link clicks ~4% of delivered; opt-outs on the link's preferences page ~0.4% (replies,
        # STOP among them, are drawn apart: campaign.demo.sending).
        engaged_share=0.045, records_opens=False,
        click_given_engaged=0.9, opt_out_given_engaged=0.1, mirror_given_engaged=0.0,
    ),
    Channel.PUSH: ChannelBehaviour(
        messages_per_hour=300_000, feedback_delay_mean_s=1.0, validity=timedelta(days=1),
        deferral_share=0.01, deferral_texts=("FCM 503 UNAVAILABLE: The server is overloaded, retry later",),
        transient_bounces=(),
        # App opened from the notification by ~7% of recipients.
        engaged_share=0.07, records_opens=True,
        click_given_engaged=0.0, opt_out_given_engaged=0.0, mirror_given_engaged=0.0,
    ),
}
