"""The quarantine and the denylist as updateDeliveryExecInfo keeps them: one row per (address,
channel), replayed event by event from the raw rows of each batch.

Why it exists apart from the workflow's module: the rules of an address's state — when an error
counts, when the address is quarantined, when it goes on the denylist, what an SMS opt-out keyword
is — are the part of the workflow an operator asks about and the tests read off one by one; here
they read as one piece, while :mod:`workflows.builtin.update_delivery_exec_info` walks the raw
tables and writes the logs.

Invariants:

- **One replay, in raw-row order.** A batch's events of one raw table (bounces and spam complaints
  of SendingFeedback, opt-out replies of InboundSms) are applied one by one, in id order, to the
  state stored before the batch, so where batches are cut does not change the result.
- **A denylisting is a hard error of reason 8.** A spam complaint, an opt-out keyword and a bounce
  the rules qualify hard with reason 8 (on denylist) are the same event to the replay: it counts,
  and puts the address on the denylist (status ``denylisted``) unless it is there already, whatever
  its state — quarantined included. Nothing but an operator takes an address off the denylist.
- **Never sent to again.** When an address goes on the denylist, its logs still pending on that
  channel fail with type 2 (hard) and reason 8 (on denylist), as the platform records a message to
  an address on the denylist at the time of sending; a later answer of the provider about one of
  those logs is applied as usual (the log says what actually happened).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection

from campaign.models import Delivery, DeliveryLog, FailureReason, FailureType, LogStatus, Quarantine
from workflows.sql import db_datetime, table

#: Existing quarantine rows are read per batch in chunks of this many addresses (SQLite accepts at
#: most 32,766 parameters a statement; smaller chunks keep each statement cheap to plan).
ADDRESS_CHUNK = 500

#: The error text of a log failed because its address went on the denylist before it was sent.
DENYLISTED_LOG_TEXT = "Address on denylist"

#: The default opt-out keywords of SMS replies: the standard English ones the carriers and SMS
#: providers honour (STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, OPT OUT, REVOKE) and the French
#: ARRET. Compared with :func:`normalised_reply`, so "Stop.", "stop" and "ARRÊT" match too.
DEFAULT_OPT_OUT_KEYWORDS = "STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, OPT OUT, REVOKE, ARRET"


@dataclass(frozen=True)
class Qualification:
    failure_type: int
    failure_reason: int


#: What a spam complaint or an opt-out keyword is to the replay: a hard error of reason 8.
DENYLISTING = Qualification(FailureType.HARD, FailureReason.ON_DENYLIST)


def denylists(qualification: Qualification) -> bool:
    return qualification == DENYLISTING


# --------------------------------------------------------------------------------------------
# The state of one address
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QuarantinePolicy:
    """Soft errors count only when ``error_interval`` after the last significant one; the
    address is quarantined at the ``threshold``-th; the count restarts when the last significant
    error is older than ``counter_reset``. A hard error quarantines at once."""

    error_interval: timedelta
    counter_reset: timedelta
    threshold: int

    @classmethod
    def from_properties(cls, properties: dict[str, Any]) -> QuarantinePolicy:
        return cls(
            error_interval=timedelta(days=properties["error_interval_days"]),
            counter_reset=timedelta(days=properties["counter_reset_days"]),
            threshold=properties["quarantine_threshold"],
        )


@dataclass(frozen=True)
class QuarantineState:
    """One (address, channel)'s quarantine row, as the replay sees it; ``status`` None = no row yet."""

    status: str | None = None
    error_count: int = 0
    first_error_at: datetime | None = None
    last_error_at: datetime | None = None
    failure_type: int = FailureType.NONE
    failure_reason: int = FailureReason.NONE
    error_text: str = ""


def settled(state: QuarantineState, qualification: Qualification) -> bool:
    """Whether the event leaves the state as it is: an address already denylisted, or already
    quarantined and the event does not denylist it (its row says why it was excluded)."""
    if state.status == Quarantine.Status.DENYLISTED:
        return True
    return state.status == Quarantine.Status.QUARANTINED and not denylists(qualification)


def apply_error(
    state: QuarantineState, *, at: datetime, qualification: Qualification, error_text: str, policy: QuarantinePolicy
) -> tuple[QuarantineState, bool]:
    """The state after one error at ``at``, and whether the error counted (was significant).
    Ignored failures and settled addresses (:func:`settled`) are left as they are; a ``valid``
    (released) address starts counting afresh; a denylisting puts the address on the denylist."""
    if qualification.failure_type == FailureType.IGNORED or settled(state, qualification):
        return state, False
    fresh = state.status in (None, Quarantine.Status.VALID)
    last = None if fresh else state.last_error_at
    reset = last is not None and at - last > policy.counter_reset
    significant = (
        qualification.failure_type == FailureType.HARD or last is None or reset or at - last >= policy.error_interval
    )
    count = (0 if fresh or reset else state.error_count) + (1 if significant else 0)
    if denylists(qualification):
        status = Quarantine.Status.DENYLISTED
    elif qualification.failure_type == FailureType.HARD or count >= policy.threshold:
        status = Quarantine.Status.QUARANTINED
    else:
        status = Quarantine.Status.ERRONEOUS
    return QuarantineState(
        status=status,
        error_count=count,
        first_error_at=at if fresh or reset or state.first_error_at is None else state.first_error_at,
        last_error_at=at if significant else last,
        failure_type=qualification.failure_type,
        failure_reason=qualification.failure_reason,
        error_text=error_text,
    ), significant


@dataclass(frozen=True)
class AddressEvent:
    """One error of an address in a batch: a bounce, a spam complaint or an opt-out reply, with
    the raw row's id (the replay's order), text and time, and the address and channel it is about."""

    raw_id: int
    error_text: str
    received_at: datetime
    address: str
    channel: str


QUARANTINE_FIELDS = ("status", "error_count", "first_error_at", "last_error_at", "failure_type", "failure_reason", "error_text")


@dataclass
class QuarantineUpdate:
    """What one replay wrote: its counters, and the addresses it put on the denylist."""

    counters: dict[str, int]
    denylisted: list[tuple[str, str]] = field(default_factory=list)


def _load_quarantine(keys: set[tuple[str, str]]) -> dict[tuple[str, str], QuarantineState]:
    addresses = sorted({address for address, _ in keys})
    states: dict[tuple[str, str], QuarantineState] = {}
    for start in range(0, len(addresses), ADDRESS_CHUNK):
        rows = Quarantine.objects.filter(address__in=addresses[start:start + ADDRESS_CHUNK]).values_list(
            "address", "channel", *QUARANTINE_FIELDS
        )
        for address, channel, *values in rows:
            if (address, channel) in keys:
                states[(address, channel)] = QuarantineState(**dict(zip(QUARANTINE_FIELDS, values, strict=True)))
    return states


def update_quarantine(
    events: Iterable[tuple[AddressEvent, Qualification]], *, policy: QuarantinePolicy
) -> QuarantineUpdate:
    """Replay a batch's errors (in raw-row id order) on the stored quarantine and upsert the rows
    that changed."""
    events = list(events)
    keys = {(event.address, event.channel) for event, _ in events}
    before = _load_quarantine(keys)
    after = dict(before)
    significant = 0
    for event, qualification in events:
        key = (event.address, event.channel)
        state = after.get(key, QuarantineState())
        after[key], counted = apply_error(
            state, at=event.received_at, qualification=qualification, error_text=event.error_text, policy=policy
        )
        significant += counted
    changed = {key: state for key, state in after.items() if state.status is not None and state != before.get(key)}
    Quarantine.objects.bulk_create(
        [Quarantine(address=address, channel=channel, **{f: getattr(s, f) for f in QUARANTINE_FIELDS})
         for (address, channel), s in sorted(changed.items())],
        update_conflicts=True,
        unique_fields=["address", "channel"],
        update_fields=[*QUARANTINE_FIELDS, "updated_at"],
    )

    def newly(status: str) -> list[tuple[str, str]]:
        return sorted(key for key, state in changed.items()
                      if state.status == status and before.get(key, QuarantineState()).status != status)

    denylisted = newly(Quarantine.Status.DENYLISTED)
    return QuarantineUpdate(
        counters={"significant_errors": significant, "quarantine_rows_written": len(changed),
                  "addresses_quarantined": len(newly(Quarantine.Status.QUARANTINED)),
                  "addresses_denylisted": len(denylisted)},
        denylisted=denylisted,
    )


def fail_pending_logs(keys: Sequence[tuple[str, str]], *, now: datetime) -> int:
    """The logs still pending of each (address, channel) just put on the denylist: failed, hard,
    reason 8. Through the address index, a chunk of addresses per statement. Returns the count."""
    by_channel: dict[str, list[str]] = {}
    for address, channel in keys:
        by_channel.setdefault(channel, []).append(address)
    logs, deliveries = table(DeliveryLog), table(Delivery)
    failed = 0
    with connection.cursor() as cursor:
        for channel, addresses in sorted(by_channel.items()):
            for start in range(0, len(addresses), ADDRESS_CHUNK):
                chunk = addresses[start:start + ADDRESS_CHUNK]
                cursor.execute(
                    f"""
                    UPDATE {logs} SET status = {LogStatus.FAILED}, failure_type = {FailureType.HARD},
                        failure_reason = {FailureReason.ON_DENYLIST}, error_text = %s, updated_at = %s
                    WHERE status = {LogStatus.PENDING} AND address IN ({", ".join(["%s"] * len(chunk))})
                        AND delivery_id IN (SELECT id FROM {deliveries} WHERE channel = %s)
                    """,
                    [DENYLISTED_LOG_TEXT, db_datetime(now), *chunk, channel],
                )
                failed += cursor.rowcount
    return failed


# --------------------------------------------------------------------------------------------
# SMS replies
# --------------------------------------------------------------------------------------------

def normalised_reply(text: str) -> str:
    """A reply as keywords are compared: accents dropped, letters and digits only, case-folded.
    "Stop.", " STOP! " and "stop" all give "stop"; "ARRÊT" gives "arret"; "stop please" gives
    "stopplease", which is no keyword: only a reply that is a keyword, as a whole, opts out."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if char.isalnum()).casefold()


def opt_out_keywords(setting: str) -> frozenset[str]:
    """The keywords of the ``opt_out_keywords`` property (comma-separated), normalised."""
    return frozenset(word for word in (normalised_reply(item) for item in setting.split(",")) if word)


def normalised_phone(raw: str) -> str:
    """A sender's number as profiles and logs hold it: international format without separators
    ("+33 6 12 34 56 78" and "0033612345678" give "+33612345678")."""
    raw = raw.strip()
    digits = "".join(char for char in raw if char.isdigit())
    if raw.startswith("+"):
        return "+" + digits
    return "+" + digits[2:] if digits.startswith("00") else digits
