"""The soak's control: what the data would be had no fault happened, and the comparison with it.

Why: a soak that only checks statuses would miss a batch committed twice or lost. The data the
workflows produce is compared instead, with a copy of the seeded database on which the workflows
ran without any fault.

- After seeding, the test database is copied (``CREATE DATABASE ... TEMPLATE``) into the control.
- After the soak (faults, then everything healed), the soak database gets **canonical passes**
  (every built-in workflow run once in-process, in id order, without the waits of
  :data:`CANONICAL_OVERRIDES`) until a pass changes nothing
  compared (:func:`settle`). The control gets the same, run by ``python -m tests.reliability.control``
  on the control database, with no fault at all. A workflow reading what a later one in the order
  writes needs a second pass; the loop makes the order irrelevant.
- Every table of the ``campaign`` app is then compared as a multiset of rows, without the ``id``
  column and without date-time columns (they record when a run happened, which differs between
  the two databases by design), nor the columns of :data:`NOT_COMPARED`, which describe the
  database server. A row lost or written twice by a fault shows as a difference.

This is sound because the workflows are meant to converge: each computes from its sources with
cursors committed in the same transaction as its effects, so after everything was consumed one
more pass changes nothing, whatever the history of runs. It does not show *when* things happened;
the soak's other checks (overlaps, leases, slots) cover that.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

#: Canonical passes stop once one changes nothing compared; more than this means they never settle.
MAX_PASSES = 5
#: Waits that exist for writers running at the same time (a log stamped before its transaction
#: commits is read a few minutes later; events are archived an hour after processing). Nothing
#: else runs during the canonical passes, and with the waits the result would depend on how long
#: ago the soak's runs wrote: the control, written seconds before, would leave those rows for later.
CANONICAL_OVERRIDES = {
    "mobileAppOptOutMgt": {"margin_minutes": 0},
    "mcSynch_local": {"delay_minutes": 0},
}
#: Columns that describe the database server, not the data: never equal between two databases.
NOT_COMPARED = {
    "campaign_customermetrics": {"database_size_bytes"},  # billing records pg_database_size()
}


def canonical_pass() -> list[tuple[str, str, str]]:
    """Run every built-in workflow once in this process, in id order; returns (id, status, reason)."""
    from workflows import commands
    from workflows.definition import builtin_definitions
    from workflows.models import Trigger

    results = []
    for definition in builtin_definitions():
        run = commands.run_now(definition.id, actor="soak control", trigger=Trigger.CLI, force=True, sync=True,
                               overrides=CANONICAL_OVERRIDES.get(definition.id))
        results.append((definition.id, run.status, run.reason))
    return results


def settle() -> list[list[tuple[str, str, str]]]:
    """Canonical passes until one leaves every compared table as it found it; returns each pass's results."""
    from django.db import connection

    tables = compared_columns()
    passes = []
    with connection.cursor() as cursor:
        before = fingerprints(cursor, tables)
    while len(passes) < MAX_PASSES:
        passes.append(canonical_pass())
        with connection.cursor() as cursor:
            after = fingerprints(cursor, tables)
        if after == before:
            return passes
        before = after
    raise RuntimeError(f"the data still changed after {MAX_PASSES} canonical passes")


def compared_columns() -> dict[str, list[str]]:
    """Per table of the campaign app: the columns compared (no id, no date-time)."""
    from django.apps import apps
    from django.db import models

    tables = {}
    for model in apps.get_app_config("campaign").get_models():
        if model._meta.proxy or not model._meta.managed:
            continue
        skipped = NOT_COMPARED.get(model._meta.db_table, set())
        columns = [field.column for field in model._meta.concrete_fields
                   if not field.primary_key and not isinstance(field, models.DateTimeField) and field.column not in skipped]
        tables[model._meta.db_table] = columns
    return dict(sorted(tables.items()))


def fingerprints(cursor: object, tables: dict[str, list[str]]) -> dict[str, tuple[int, str]]:
    """(rows, md5 of the sorted rows) per table, through a DB-API cursor on either database."""
    result = {}
    for table, columns in tables.items():
        row = "ROW(" + ", ".join(f'"{column}"' for column in columns) + ")::text" if columns else "''"
        cursor.execute(f'SELECT COUNT(*), COALESCE(md5(string_agg(r, E\'\\n\' ORDER BY r)), \'\') '
                       f'FROM (SELECT {row} AS r FROM "{table}") AS t')
        count, digest = cursor.fetchone()
        result[table] = (count, digest)
    return result


def rows_of(cursor: object, table: str, columns: list[str]) -> Counter[str]:
    row = "ROW(" + ", ".join(f'"{column}"' for column in columns) + ")::text" if columns else "''"
    cursor.execute(f'SELECT {row} FROM "{table}"')
    return Counter(text for (text,) in cursor.fetchall())


def differences(soaked: object, controlled: object, table: str, columns: list[str], *, limit: int = 3) -> str:
    """A few rows found only on one side, for the failure message."""
    mine, theirs = rows_of(soaked, table, columns), rows_of(controlled, table, columns)
    only_soak, only_control = list((mine - theirs).elements()), list((theirs - mine).elements())
    return (f"{table} ({', '.join(columns)}): {len(only_soak)} rows only after the soak, e.g. {only_soak[:limit]}; "
            f"{len(only_control)} only in the control, e.g. {only_control[:limit]}")


def main() -> None:
    """The control's passes, on the database DATABASE_URL names (a copy of the seeded one)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    for number, results in enumerate(settle(), start=1):
        for workflow_id, status, reason in results:
            print(f"control pass {number}: {workflow_id} {status} {reason}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
