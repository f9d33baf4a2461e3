"""deliverabilityUpdate — Update for deliverability.

Why it exists: the deliverability service maintains the rules that qualify bounces (which raw
error text means a hard "user unknown", which a soft "mailbox full", …), the sending limits per MX
and the settings per recipient domain. This workflow fetches them once a day and replaces the
instance's copies, which updateDeliveryExecInfo reads at its next run.

Invariants it keeps:

- **HTTPS only.** The account's base URL must be ``https://``: an ``http://`` URL fails the run
  with a configuration error that names it, before any request (the rules steer every bounce and
  must not be tampered with in transit).
- **All or nothing.** The answer is validated completely (:mod:`campaign.integrations.deliverability`)
  and, on PostgreSQL, every bounce pattern is also compiled by the database, before anything is
  written; then the service's bounce, MX and domain rules are replaced in one transaction. A
  service that is unreachable, refuses the call or answers something malformed fails the run and
  the rules stay exactly as they were.
- **Local rules are kept.** Only rules whose ``source`` is ``service`` are replaced; rules an
  operator added by hand (``source`` = ``local``) stay, and are tried with the service's in one
  priority order (lower first; on equal priority the older rule first).
- **A glitch does not wipe the qualification.** An answer with fewer bounce rules than the
  ``min_bounce_rules`` property (default 1) is refused: an empty list from a half-deployed service
  would otherwise leave every bounce "soft, not defined".
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable, Iterable

from django.db import DataError, connection

from campaign.integrations.deliverability import KIND, BounceRuleSpec, DeliverabilityClient, DomainRuleSpec, MxRuleSpec, Rules
from campaign.integrations.http import ServiceError, get_account
from campaign.models import BounceRule, DomainRule, MxRule, RuleSource
from workflows.context import ActivityContext, SkipRun, savepoint
from workflows.definition import Schedule, WorkflowDefinition, register
from workflows.properties import IntegerProperty

WORKFLOW_ID = "deliverabilityUpdate"

SERVICE = RuleSource.SERVICE


def update_rules(ctx: ActivityContext) -> None:
    """Fetch, validate, then replace the service's rules in one transaction."""
    account = get_account(KIND)
    if account is None:
        raise SkipRun(f"no enabled {KIND} account")
    rules = DeliverabilityClient(account).fetch_rules()
    minimum = ctx.properties["min_bounce_rules"]
    if len(rules.bounce_rules) < minimum:
        raise ServiceError(f"malformed answer: GET /rules: {len(rules.bounce_rules)} bounce rules, fewer than "
                           f"min_bounce_rules={minimum}; the current rules are kept")
    check_patterns_on_database(rules.bounce_rules)

    def replace() -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
        changes = {
            "bounce rules": _diff(_bounce_keys(BounceRule.objects.filter(source=SERVICE)), map(_bounce_key, rules.bounce_rules)),
            "MX rules": _diff(_mx_keys(MxRule.objects.filter(source=SERVICE)), map(_mx_key, rules.mx_rules)),
            "domain rules": _diff(_domain_keys(DomainRule.objects.filter(source=SERVICE)), map(_domain_key, rules.domain_rules)),
        }
        replace_service_rules(rules)
        local = {
            "bounce rules": BounceRule.objects.exclude(source=SERVICE).count(),
            "MX rules": MxRule.objects.exclude(source=SERVICE).count(),
            "domain rules": DomainRule.objects.exclude(source=SERVICE).count(),
        }
        return changes, local

    changes, local = ctx.unit(replace)
    ctx.count("bounce_rules", len(rules.bounce_rules))
    ctx.count("mx_rules", len(rules.mx_rules))
    ctx.count("domain_rules", len(rules.domain_rules))
    ctx.count("rules_added", sum(added for added, _ in changes.values()))
    ctx.count("rules_removed", sum(removed for _, removed in changes.values()))
    ctx.log(f"Rules from {account.name}: " + "; ".join(
        f"{what} {count} ({changes[what][0]} new, {changes[what][1]} dropped; {local[what]} local kept)"
        for what, count in (("bounce rules", len(rules.bounce_rules)), ("MX rules", len(rules.mx_rules)),
                            ("domain rules", len(rules.domain_rules)))
    ) + ".")


def replace_service_rules(rules: Rules) -> None:
    """Delete the service-sourced rules and insert the new ones (the caller holds the transaction)."""
    BounceRule.objects.filter(source=SERVICE).delete()
    MxRule.objects.filter(source=SERVICE).delete()
    DomainRule.objects.filter(source=SERVICE).delete()
    BounceRule.objects.bulk_create(
        BounceRule(pattern=rule.pattern, failure_type=rule.failure_type, failure_reason=rule.failure_reason,
                   priority=rule.priority, source=SERVICE)
        for rule in rules.bounce_rules
    )
    MxRule.objects.bulk_create(
        MxRule(mx_mask=rule.mx_mask, max_connections=rule.max_connections, max_messages_per_hour=rule.max_messages_per_hour,
               options=rule.options, source=SERVICE)
        for rule in rules.mx_rules
    )
    DomainRule.objects.bulk_create(DomainRule(domain=rule.domain, options=rule.options, source=SERVICE)
                                   for rule in rules.domain_rules)


def check_patterns_on_database(bounce_rules: list[BounceRuleSpec]) -> None:
    """On PostgreSQL, have the database compile every pattern too (``~*``, its case-insensitive
    match), so a rule is never stored that a set-based qualification in SQL could not use. The
    client has already compiled them with Python's ``re``, which is what qualifies bounces today.
    SQLite's REGEXP is Python's ``re``: nothing more to check there."""
    if connection.vendor != "postgresql" or not bounce_rules:
        return
    with connection.cursor() as cursor:
        for index, rule in enumerate(bounce_rules):
            try:
                with savepoint():  # the error must not abort the unit it is checked in
                    cursor.execute("SELECT '' ~* %s", [rule.pattern])
            except DataError as error:
                detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ServiceError(f"malformed answer: GET /rules bounce_rules[{index}].pattern {rule.pattern!r:.80} "
                                   f"is not a valid PostgreSQL regular expression: {detail}") from None


# -- what changed, for the journal ------------------------------------------------------------
def _diff(before: Iterable[Hashable], after: Iterable[Hashable]) -> tuple[int, int]:
    """(added, removed) between two multisets of rules."""
    old, new = Counter(before), Counter(after)
    return sum((new - old).values()), sum((old - new).values())


def _bounce_key(rule: BounceRuleSpec) -> tuple[str, int, int, int]:
    return rule.pattern, rule.failure_type, rule.failure_reason, rule.priority


def _mx_key(rule: MxRuleSpec) -> tuple[str, int | None, int | None, str]:
    return rule.mx_mask, rule.max_connections, rule.max_messages_per_hour, json.dumps(rule.options, sort_keys=True)


def _domain_key(rule: DomainRuleSpec) -> tuple[str, str]:
    return rule.domain, json.dumps(rule.options, sort_keys=True)


def _bounce_keys(rows: Iterable[BounceRule]) -> Iterable[tuple[str, int, int, int]]:
    return (_bounce_key(BounceRuleSpec(r.pattern, r.failure_type, r.failure_reason, r.priority)) for r in rows)


def _mx_keys(rows: Iterable[MxRule]) -> Iterable[tuple[str, int | None, int | None, str]]:
    return (_mx_key(MxRuleSpec(r.mx_mask, r.max_connections, r.max_messages_per_hour, r.options)) for r in rows)


def _domain_keys(rows: Iterable[DomainRule]) -> Iterable[tuple[str, str]]:
    return (_domain_key(DomainRuleSpec(r.domain, r.options)) for r in rows)


definition = register(WorkflowDefinition(
    id=WORKFLOW_ID,
    label="Update for deliverability",
    description="Fetches the bounce, MX and domain rules from the deliverability service and replaces the local lists.",
    schedule=Schedule("0 2 * * *"),
    activities=(update_rules,),
    properties=(
        IntegerProperty("min_bounce_rules", 1, minimum=0, maximum=100_000, unit="rules",
                        help="Refuse an answer with fewer bounce rules than this (a service glitch must not wipe "
                             "the qualification rules); 0 accepts an empty list."),
    ),
))
