"""Client of the analytics service: push KPI rows, fetch the service's totals.

Why a module of its own: the two KPI workflows must agree on the protocol to the byte (the batch
id is a hash of what is sent), and every answer must be validated completely before a workflow
writes anything. This module is the only place that knows the wire format:

- ``POST /kpis`` ``{"batch_id": str, "rows": [row, ...]}`` → ``{"accepted": n}``. The service
  **adds** the counters of the rows it receives to its totals per (date, delivery_id), and
  ignores a batch id it has already applied (answering the same ``accepted`` again), so a retried
  push is never counted twice. A batch is acknowledged when ``accepted`` equals its row count.
- ``GET /kpis?from=YYYY-MM-DD&to=YYYY-MM-DD`` (both days included) → ``{"rows": [row, ...]}``: the
  service's totals, one row per (date, delivery_id).

A row is ``{"date", "campaign_id", "campaign_label", "delivery_id", "delivery_label", "sent",
"delivered", "opened", "unique_opens", "clicked", "unique_clicks", "unsubscribed", "bounces"}``;
counters are integers and may be negative in a push (a correction of a total the service counted
too high). Retries, timeouts and the bearer token are the shared HTTP layer's
(:mod:`campaign.integrations.http`); the token is also scrubbed from every error this module raises.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from campaign.integrations.http import ServiceClient, ServiceError, expect, without_token
from campaign.models import ExternalAccount

KIND = ExternalAccount.Kind.ANALYTICS

#: The counters of a row, in the protocol's order.
COUNTERS = ("sent", "delivered", "opened", "unique_opens", "clicked", "unique_clicks", "unsubscribed", "bounces")
IDENTITY = ("date", "campaign_id", "campaign_label", "delivery_id", "delivery_label")
ROW_KEYS = IDENTITY + COUNTERS

_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class KpiRow:
    """One day of one email delivery: totals (fetched, local) or increments (pushed)."""

    date: date
    campaign_id: int | None
    campaign_label: str
    delivery_id: int
    delivery_label: str
    sent: int = 0
    delivered: int = 0
    opened: int = 0
    unique_opens: int = 0
    clicked: int = 0
    unique_clicks: int = 0
    unsubscribed: int = 0
    bounces: int = 0

    @property
    def key(self) -> tuple[date, int]:
        """What identifies a row at the service: the day and the delivery."""
        return self.date, self.delivery_id

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}

    def is_zero(self) -> bool:
        return not any(getattr(self, name) for name in COUNTERS)

    @classmethod
    def from_json(cls, item: Any) -> KpiRow:
        """A row in the wire format (validated like an answer's)."""
        return _parse_row(item, where="row")

    def to_json(self) -> dict[str, Any]:
        return {"date": self.date.isoformat(), "campaign_id": self.campaign_id, "campaign_label": self.campaign_label,
                "delivery_id": self.delivery_id, "delivery_label": self.delivery_label, **self.counters()}


def batch_id_for(rows: Iterable[KpiRow], *, bases: Mapping[tuple[date, int], Mapping[str, int]]) -> str:
    """The content-derived id of a push: SHA-256 of the canonical JSON of each row's day,
    delivery, the totals it moves the service from (``bases``) and its increments.

    The bases are in because increments repeat: "one more open on 3 May for delivery 42" can be
    true twice, and two equal ids would make the service drop the second push. The same move from
    the same totals is the same batch, whoever computes it (a resend, or a reconciliation that
    finds the same difference), and the service applies it once. Labels are left out: renaming a
    delivery does not make a different move."""
    canonical = [
        {"date": row.date.isoformat(), "delivery_id": row.delivery_id,
         "from": {name: int(bases.get(row.key, {}).get(name, 0)) for name in COUNTERS}, "add": row.counters()}
        for row in sorted(rows, key=lambda row: row.key)
    ]
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class AnalyticsClient:
    """The two calls of the protocol, on one HTTP session of the account."""

    def __init__(self, account: ExternalAccount, *, sleep: Callable[[float], None] | None = None) -> None:
        self._http = ServiceClient(account, sleep=sleep)
        self._secret = self._http.token
        self.account_name = account.name

    def push_kpis(self, *, batch_id: str, rows: Sequence[KpiRow]) -> int:
        """Send one batch; returns the accepted row count, which is the batch's size (anything
        else is a failure: the batch is not acknowledged)."""
        if not rows:
            raise ValueError("an empty batch is never pushed")
        body = {"batch_id": batch_id, "rows": [row.to_json() for row in rows]}
        answer = self._guarded(lambda: self._http.post("kpis", json=body))
        self._guarded(lambda: _validate_push_answer(answer, batch_id=batch_id, sent=len(rows)))
        return answer["accepted"]

    def fetch_kpis(self, *, date_from: date, date_to: date) -> list[KpiRow]:
        """The service's totals of the days ``date_from`` to ``date_to`` (both included)."""
        if date_to < date_from:
            raise ValueError(f"empty range {date_from} .. {date_to}")
        params = {"from": date_from.isoformat(), "to": date_to.isoformat()}
        answer = self._guarded(lambda: self._http.get("kpis", params=params))
        return self._guarded(lambda: _parse_fetch_answer(answer, date_from=date_from, date_to=date_to))

    def _guarded(self, call: Callable[[], Any]) -> Any:
        return without_token(self._secret, call)


# -- validation -------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_push_answer(answer: Any, *, batch_id: str, sent: int) -> None:
    expect(isinstance(answer, dict), f"POST /kpis: expected an object, got {_shape(answer)}")
    expect("accepted" in answer, f"POST /kpis: no 'accepted' in the answer (keys: {sorted(answer)[:10]})")
    accepted = answer["accepted"]
    expect(_is_int(accepted), f"POST /kpis: 'accepted' must be an integer, got {accepted!r:.40}")
    if accepted != sent:
        raise ServiceError(f"POST /kpis: the service accepted {accepted} of the {sent} rows of batch {batch_id}; "
                           "the batch is not acknowledged")


def _parse_fetch_answer(answer: Any, *, date_from: date, date_to: date) -> list[KpiRow]:
    expect(isinstance(answer, dict), f"GET /kpis: expected an object, got {_shape(answer)}")
    expect("rows" in answer, f"GET /kpis: no 'rows' in the answer (keys: {sorted(answer)[:10]})")
    expect(isinstance(answer["rows"], list), f"GET /kpis: 'rows' must be a list, got {_shape(answer['rows'])}")
    rows: list[KpiRow] = []
    seen: set[tuple[date, int]] = set()
    for index, item in enumerate(answer["rows"]):
        row = _parse_row(item, where=f"GET /kpis rows[{index}]")
        expect(date_from <= row.date <= date_to,
               f"GET /kpis rows[{index}]: date {row.date} is outside the requested {date_from} .. {date_to}")
        expect(row.key not in seen, f"GET /kpis rows[{index}]: a second row for {row.date} and delivery {row.delivery_id}")
        seen.add(row.key)
        rows.append(row)
    return rows


def _parse_row(item: Any, *, where: str) -> KpiRow:
    expect(isinstance(item, dict), f"{where}: expected an object, got {_shape(item)}")
    missing = [key for key in ROW_KEYS if key not in item]
    expect(not missing, f"{where}: missing {', '.join(missing)}")
    day = item["date"]
    expect(isinstance(day, str) and bool(_ISO_DAY.fullmatch(day)), f"{where}.date: expected YYYY-MM-DD, got {day!r:.40}")
    try:
        parsed_day = date.fromisoformat(day)
    except ValueError:
        raise ServiceError(f"malformed answer: {where}.date: {day!r} is not a date") from None
    expect(item["campaign_id"] is None or _is_int(item["campaign_id"]),
           f"{where}.campaign_id: expected an integer or null, got {item['campaign_id']!r:.40}")
    expect(_is_int(item["delivery_id"]), f"{where}.delivery_id: expected an integer, got {item['delivery_id']!r:.40}")
    for key in ("campaign_label", "delivery_label"):
        expect(isinstance(item[key], str), f"{where}.{key}: expected text, got {item[key]!r:.40}")
    for key in COUNTERS:
        expect(_is_int(item[key]), f"{where}.{key}: expected an integer, got {item[key]!r:.40}")
    return KpiRow(parsed_day, item["campaign_id"], item["campaign_label"], item["delivery_id"], item["delivery_label"],
                  **{key: item[key] for key in COUNTERS})


def _shape(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", type(None): "null"}.get(type(value), type(value).__name__)
