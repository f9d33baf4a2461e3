"""An analytics service as the protocol describes it, on pytest-httpserver (a real HTTP server on
loopback), and the independent expectations shared by the kpiSharing and kpiReconciliation tests
(their fixtures are in ``conftest.py``).

The service adds the counters of each pushed row to its totals per (date, delivery_id), applies a batch id
once (a replay answers the same ``accepted`` and adds nothing), answers ``GET /kpis`` with its
totals, and refuses a wrong bearer token with 401. Tests script failures with :meth:`script`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from django.utils import timezone
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from campaign.models import Channel, Delivery, DeliveryAggregate, SharedKpi

TOKEN = "analytics-token-3f9c1a7e5b"  # a test value, checked never to leak
TOKEN_ENV = "CAMPAIGN_TOKEN_TEST_KPI_ANALYTICS"
COUNTERS = ("sent", "delivered", "opened", "unique_opens", "clicked", "unique_clicks", "unsubscribed", "bounces")
# protocol name → DeliveryAggregate column, written out again here rather than imported
COLUMN = {"sent": "sent", "delivered": "delivered", "opened": "opens", "unique_opens": "unique_opens",
          "clicked": "clicks", "unique_clicks": "unique_clicks", "unsubscribed": "unsubscribes", "bounces": "bounces"}


#: A scripted answer: a ready Response, APPLY_THEN_FAIL (apply the push, then answer 500: the
#: acknowledgement is lost), or a function of the request.
APPLY_THEN_FAIL = "apply then fail"
Answer = Response | str | Callable[[Request], Response]


@dataclass
class FakeAnalytics:
    server: HTTPServer
    token: str
    totals: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    posts: list[dict[str, Any]] = field(default_factory=list)  # every POST body received, in order
    gets: list[dict[str, str]] = field(default_factory=list)  # every GET's query
    _scripts: dict[str, list[Answer]] = field(default_factory=lambda: {"POST": [], "GET": []})

    def __post_init__(self) -> None:
        self.server.expect_request("/kpis", method="POST").respond_with_handler(self._post)
        self.server.expect_request("/kpis", method="GET").respond_with_handler(self._get)

    def script(self, method: str, *answers: Answer) -> None:
        """Answer the next requests of ``method`` with these, then behave normally again."""
        self._scripts[method].extend(answers)

    # -- what tests compare ----------------------------------------------------------------------
    def counters(self) -> dict[tuple[str, int], dict[str, int]]:
        """Totals by (ISO date, delivery id), rows whose counters are all zero left out."""
        return {key: {name: row[name] for name in COUNTERS} for key, row in self.totals.items()
                if any(row[name] for name in COUNTERS)}

    def set_total(self, row: dict[str, Any]) -> None:
        """Put a row of totals on the service's side, as if pushed by someone else."""
        self.totals[(row["date"], row["delivery_id"])] = dict(row)

    # -- the protocol ----------------------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    def _post(self, request: Request) -> Response:
        body = json.loads(request.get_data(as_text=True))
        self.posts.append(body)
        if not self._authorized(request):
            return Response("unauthorized", status=401)
        scripted = self._scripts["POST"].pop(0) if self._scripts["POST"] else None
        if isinstance(scripted, Response):
            return scripted
        if callable(scripted):
            return scripted(request)
        accepted = self._apply(body)
        if scripted == APPLY_THEN_FAIL:
            return Response("upstream timeout", status=500)
        return Response(json.dumps({"accepted": accepted}), content_type="application/json")

    def _apply(self, body: dict[str, Any]) -> int:
        if body["batch_id"] in self.applied:
            return self.applied[body["batch_id"]]
        for row in body["rows"]:
            key = (row["date"], row["delivery_id"])
            total = self.totals.setdefault(key, {**row, **dict.fromkeys(COUNTERS, 0)})
            for name in COUNTERS:
                total[name] += row[name]
        self.applied[body["batch_id"]] = len(body["rows"])
        return len(body["rows"])

    def _get(self, request: Request) -> Response:
        query = dict(request.args)
        self.gets.append(query)
        if not self._authorized(request):
            return Response("unauthorized", status=401)
        scripted = self._scripts["GET"].pop(0) if self._scripts["GET"] else None
        if isinstance(scripted, Response):
            return scripted
        if callable(scripted):
            return scripted(request)
        rows = [dict(row) for (day, _), row in sorted(self.totals.items()) if query["from"] <= day <= query["to"]]
        return Response(json.dumps({"rows": rows}), content_type="application/json")


# -- expectations shared by the KPI tests -------------------------------------------------------
def today() -> date:
    return timezone.localdate()


def aggregate(delivery: Delivery, days_ago: int, *, updated: datetime, seed: int) -> DeliveryAggregate:
    """An aggregate row with counters derived from ``seed`` (all different, all non-zero)."""
    values = {"sent": 100 + seed, "delivered": 90 + seed, "bounces": 10, "opens": 40 + seed, "unique_opens": 30 + seed,
              "clicks": 12 + seed, "unique_clicks": 9 + seed, "unsubscribes": 1 + seed % 3}
    return DeliveryAggregate.objects.create(day=today() - timedelta(days=days_ago), delivery=delivery,
                                            channel=delivery.channel, updated_at=updated, **values)


def wire_row(row: DeliveryAggregate, **counters: int) -> dict[str, Any]:
    """The row the protocol carries for this aggregate (its totals, or the counters given)."""
    delivery = Delivery.objects.select_related("campaign").get(pk=row.delivery_id)
    return {"date": row.day.isoformat(), "campaign_id": delivery.campaign_id,
            "campaign_label": delivery.campaign.label if delivery.campaign else "",
            "delivery_id": delivery.pk, "delivery_label": delivery.label,
            **{name: counters.get(name, getattr(row, COLUMN[name])) for name in COUNTERS}}


def expected_batch_id(rows: list[dict[str, Any]], bases: dict[tuple[str, int], dict[str, int]] | None = None) -> str:
    """docs/integrations.md's definition of a batch id, written out independently."""
    items = []
    for row in sorted(rows, key=lambda row: (row["date"], row["delivery_id"])):
        start = (bases or {}).get((row["date"], row["delivery_id"]), dict.fromkeys(COUNTERS, 0))
        items.append({"date": row["date"], "delivery_id": row["delivery_id"], "from": start,
                      "add": {name: row[name] for name in COUNTERS}})
    return hashlib.sha256(json.dumps(items, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def local_window_totals(lookback_days: int = 62) -> dict[tuple[str, int], dict[str, int]]:
    """The email aggregates of the window, by (ISO date, delivery id), in the protocol's names."""
    first = today() - timedelta(days=lookback_days)
    return {(row.day.isoformat(), row.delivery_id): {name: getattr(row, COLUMN[name]) for name in COUNTERS}
            for row in DeliveryAggregate.objects.filter(channel=Channel.EMAIL, day__gte=first)
            if any(getattr(row, COLUMN[name]) for name in COUNTERS)}


def ledger() -> dict[tuple[str, int], dict[str, int]]:
    return {(row.day.isoformat(), row.delivery_id): {name: getattr(row, name) for name in COUNTERS}
            for row in SharedKpi.objects.all()}


