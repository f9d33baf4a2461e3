"""``manage.py seed_demo``: load the deterministic demo data (see :mod:`campaign.demo`).

A thin command: it parses the options, guards against a database in use and prints what was
written; the data itself comes from :func:`campaign.demo.seed_demo`.
"""

from __future__ import annotations

import argparse
from datetime import date, datetime

from django.core.management.base import BaseCommand, CommandError, CommandParser

from campaign import demo

NOT_EMPTY_MESSAGE = "database not empty, demo data not loaded"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _anchor(text: str) -> datetime:
    try:
        return demo.anchor_from_date(date.fromisoformat(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def _as_anchor(value: datetime | date | str | None) -> datetime:
    """call_command(anchor=...) skips the parser: accept what the command line would give, or a date."""
    if value is None:
        return demo.default_anchor()
    if isinstance(value, str):
        return _anchor(value)
    if isinstance(value, datetime):
        return value
    return demo.anchor_from_date(value)


class Command(BaseCommand):
    help = (
        "Fill an empty database with deterministic, realistic demo data: profiles, campaigns, deliveries in "
        "every state and channel, delivery logs, raw feedback and tracking hits not yet consolidated, events, "
        "quarantine, push subscriptions, an A/B test, a report share, disabled external accounts and default "
        "bounce rules. The same --seed and --anchor give the same rows. A database holding any profile or "
        "delivery is refused, unless --force, which first DELETES all campaign data (profiles, deliveries, "
        "logs, events, reports, rules, external accounts...; users, API keys and workflow state are kept) "
        "and then loads the demo data in the same transaction; or --if-empty, which then does nothing and exits 0."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--profiles", type=_positive_int, default=demo.DEFAULT_PROFILES,
            help=f"Number of profiles (default {demo.DEFAULT_PROFILES}); about 4 delivery logs each.",
        )
        parser.add_argument("--seed", type=int, default=demo.DEFAULT_SEED, help=f"Random seed (default {demo.DEFAULT_SEED}).")
        parser.add_argument(
            "--anchor", type=_anchor, default=None, metavar="YYYY-MM-DD",
            help=(
                "The 'now' of the data, at 00:00 UTC (default: today). Raw feedback and tracking hits fall in the "
                f"{demo.UNCONSOLIDATED_WINDOW.total_seconds() / 3600:g} hours before it."
            ),
        )
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument(
            "--force", action="store_true",
            help=(
                "Delete all campaign data first (not users, API keys or workflow state), in the same transaction. "
                "New ids continue after the deleted ones, so the workflows' id cursors stay valid."
            ),
        )
        mode.add_argument(
            "--if-empty", action="store_true",
            help=f"On a database in use, print '{NOT_EMPTY_MESSAGE}' and exit 0 (used by make run).",
        )

    def handle(
        self, *args: object, profiles: int, seed: int, anchor: datetime | date | str | None, force: bool, if_empty: bool,
        **options: object,
    ) -> None:
        if demo.database_has_domain_data():
            if if_empty:
                self.stdout.write(NOT_EMPTY_MESSAGE)
                return
            if not force:
                raise CommandError(
                    "The database already holds profiles or deliveries: seed_demo only fills an empty database. "
                    "Use --force to delete the campaign data and reload the demo data, or --if-empty to skip."
                )
        anchor = _as_anchor(anchor)
        self.stdout.write(f"Loading demo data: {profiles} profiles, seed {seed}, anchor {anchor:%Y-%m-%d %H:%M} UTC...")
        result = demo.seed_demo(profiles=profiles, seed=seed, anchor=anchor, replace=force)
        if result.deleted:
            self.stdout.write(f"Deleted {sum(result.deleted.values())} existing rows of the campaign app first.")
        width = max(len(name) for name in result.counts)
        for name, count in result.counts.items():
            self.stdout.write(f"  {name:<{width}}  {count:>10,}")
        statuses = ", ".join(f"{label.lower()} {count:,}" for label, count in result.log_statuses.items())
        self.stdout.write(f"  delivery logs by status: {statuses}")
        total = sum(result.counts.values())
        self.stdout.write(self.style.SUCCESS(f"Demo data loaded: {total:,} rows in {result.seconds:.1f} s."))
