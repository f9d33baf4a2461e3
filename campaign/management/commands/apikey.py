"""``python manage.py apikey create NAME | revoke NAME | list [--json]``: keys of the event API.

``create`` prints the new key alone on standard output (so ``KEY=$(manage.py apikey create crm)``
works) and the explanation on standard error; the key is shown this once and never again, since
only its hash is stored.
"""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from campaign.api import KeyNameTaken, create_api_key, revoke_api_keys
from campaign.models import APIKey


class Command(BaseCommand):
    help = "Create, revoke or list the API keys of the event API."

    def add_arguments(self, parser: ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{create,revoke,list}")
        create = actions.add_parser("create", help="Create a key and print it once.")
        create.add_argument("name", help="Who or what will use the key (unique).")
        revoke = actions.add_parser("revoke", help="Revoke a key: requests with it get 403 from now on.")
        revoke.add_argument("name")
        listing = actions.add_parser("list", help="List the keys (never the keys themselves).")
        listing.add_argument("--json", action="store_true", help="Print JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            self.create(options["name"])
        elif action == "revoke":
            self.revoke(options["name"])
        else:
            self.list(as_json=options["json"])

    def create(self, name: str) -> None:
        try:
            api_key, key = create_api_key(name=name)
        except (KeyNameTaken, ValueError) as problem:
            raise CommandError(str(problem)) from None
        self.stderr.write(
            f"Created API key {api_key.name!r} (prefix {api_key.prefix}). "
            "Copy it now: it is not shown again.\n"
        )
        self.stdout.write(key)

    def revoke(self, name: str) -> None:
        api_key = APIKey.objects.filter(name=name).first()
        if api_key is None:
            raise CommandError(f"no API key named {name!r}")
        if not api_key.is_active:
            self.stdout.write(f"API key {name!r} was already revoked on {api_key.revoked_at.isoformat()}.")
            return
        revoke_api_keys(names=[name])
        self.stdout.write(f"Revoked API key {name!r}: requests with it are refused from now on.")

    def list(self, *, as_json: bool) -> None:
        keys = list(APIKey.objects.order_by("name"))
        rows = [
            {
                "name": key.name,
                "prefix": key.prefix,
                "status": "active" if key.is_active else "revoked",
                "created_at": key.created_at.isoformat(),
                "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
                "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
            }
            for key in keys
        ]
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        if not rows:
            self.stdout.write("No API keys.")
            return
        header = ("NAME", "PREFIX", "STATUS", "CREATED", "LAST USED")
        table = [header] + [
            (row["name"], row["prefix"], row["status"], row["created_at"][:19], (row["last_used_at"] or "never")[:19])
            for row in rows
        ]
        widths = [max(len(line[column]) for line in table) for column in range(len(header))]
        for line in table:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
