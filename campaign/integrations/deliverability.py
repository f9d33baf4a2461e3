"""Client of the deliverability service: the bounce, MX and domain rules.

Why a module of its own: deliverabilityUpdate replaces the rules that qualify every bounce of the
instance, so an answer it has not understood completely must never reach the database. This
module is the only place that knows the wire format, and :meth:`DeliverabilityClient.fetch_rules`
returns only a fully validated answer:

- ``GET /rules``, over HTTPS only (an ``http://`` base URL is a configuration error, raised before
  any request) →
  ``{"bounce_rules": [{"pattern": regex, "failure_type": 1|2|3, "failure_reason": int, "priority": int}],
  "mx_rules": [{"mx_mask": str, "max_connections": int|null, "max_messages_per_hour": int|null, ...}],
  "domain_rules": [{"domain": str, ...}]}``.
- A bounce rule's ``pattern`` must compile as a Python regular expression (case-insensitive, the
  way updateDeliveryExecInfo applies it); ``failure_type`` is 1 soft, 2 hard or 3 ignored;
  ``failure_reason`` one of the platform's codes (0, 1, 2, 3, 4, 5, 6, 8, 20); ``priority`` an
  integer (lower is tried first).
- The other keys of an MX or domain rule (``...``) are kept as its settings (``options``).

Anything else — a missing list, a rule of the wrong shape, a duplicate MX mask or domain, more
than :data:`MAX_RULES` rules in a list — is a malformed answer: a permanent failure naming the
offending rule. Retries, timeouts and the bearer token are the shared HTTP layer's
(:mod:`campaign.integrations.http`); the token is scrubbed from every error this module raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from campaign.integrations.http import ServiceClient, ServiceError, expect, without_token
from campaign.models import ExternalAccount, FailureReason, FailureType

KIND = ExternalAccount.Kind.DELIVERABILITY

#: Failure types a bounce rule may give (0 "none" is not a qualification).
FAILURE_TYPES = frozenset({FailureType.SOFT, FailureType.HARD, FailureType.IGNORED})
FAILURE_REASONS = frozenset(FailureReason.values)
#: The columns' sizes (BounceRule.pattern, MxRule.mx_mask, DomainRule.domain).
MAX_PATTERN_LENGTH = 500
MAX_NAME_LENGTH = 255
#: Largest list accepted: the rules are held in memory and replaced in one transaction.
MAX_RULES = 10_000
#: The range of the integer columns (priority, limits).
INT_MIN, INT_MAX = -(2**31), 2**31 - 1

MX_KEYS = ("mx_mask", "max_connections", "max_messages_per_hour")
DOMAIN_KEYS = ("domain",)


@dataclass(frozen=True)
class BounceRuleSpec:
    pattern: str
    failure_type: int
    failure_reason: int
    priority: int


@dataclass(frozen=True)
class MxRuleSpec:
    mx_mask: str
    max_connections: int | None = None
    max_messages_per_hour: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DomainRuleSpec:
    domain: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rules:
    bounce_rules: list[BounceRuleSpec]
    mx_rules: list[MxRuleSpec]
    domain_rules: list[DomainRuleSpec]


class DeliverabilityClient:
    """``GET /rules`` on an HTTPS session of the account."""

    def __init__(self, account: ExternalAccount, *, sleep: Callable[[float], None] | None = None) -> None:
        self.account_name = account.name
        self._http = ServiceClient(account, require_https=True, sleep=sleep)
        self._secret = self._http.token

    def fetch_rules(self) -> Rules:
        answer = self._guarded(lambda: self._http.get("rules"))
        return self._guarded(lambda: parse_rules(answer))

    def _guarded(self, call: Callable[[], Any]) -> Any:
        return without_token(self._secret, call)


# -- validation -------------------------------------------------------------------------------
def parse_rules(answer: Any) -> Rules:
    """The answer of ``GET /rules`` → :class:`Rules`, or :class:`ServiceError` saying what is wrong."""
    expect(isinstance(answer, dict), f"GET /rules: expected an object, got {_shape(answer)}")
    for key in ("bounce_rules", "mx_rules", "domain_rules"):
        expect(key in answer, f"GET /rules: no {key!r} in the answer (keys: {sorted(answer)[:10]})")
        expect(isinstance(answer[key], list), f"GET /rules: {key!r} must be a list, got {_shape(answer[key])}")
        expect(len(answer[key]) <= MAX_RULES, f"GET /rules: {len(answer[key])} {key} (at most {MAX_RULES})")
    bounce_rules = [_bounce_rule(item, where=f"bounce_rules[{index}]") for index, item in enumerate(answer["bounce_rules"])]
    mx_rules = [_mx_rule(item, where=f"mx_rules[{index}]") for index, item in enumerate(answer["mx_rules"])]
    domain_rules = [_domain_rule(item, where=f"domain_rules[{index}]") for index, item in enumerate(answer["domain_rules"])]
    _refuse_duplicates([rule.mx_mask for rule in mx_rules], what="mx_rules", key="mx_mask")
    _refuse_duplicates([rule.domain for rule in domain_rules], what="domain_rules", key="domain")
    return Rules(bounce_rules, mx_rules, domain_rules)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A bounce pattern as updateDeliveryExecInfo applies it: searched anywhere in the raw bounce
    text, case-insensitively."""
    return re.compile(pattern, re.IGNORECASE)


def _bounce_rule(item: Any, *, where: str) -> BounceRuleSpec:
    where = f"GET /rules {where}"
    expect(isinstance(item, dict), f"{where}: expected an object, got {_shape(item)}")
    missing = [key for key in ("pattern", "failure_type", "failure_reason", "priority") if key not in item]
    expect(not missing, f"{where}: missing {', '.join(missing)}")
    pattern = item["pattern"]
    expect(_is_name(pattern, MAX_PATTERN_LENGTH, spaces=True),
           f"{where}.pattern: expected non-empty text of at most {MAX_PATTERN_LENGTH} characters, got {pattern!r:.60}")
    try:
        compile_pattern(pattern)
    except re.error as error:
        raise ServiceError(
            f"malformed answer: {where}.pattern {pattern!r:.80} is not a valid regular expression: {error}") from None
    failure_type, failure_reason, priority = item["failure_type"], item["failure_reason"], item["priority"]
    expect(_is_int(failure_type) and failure_type in FAILURE_TYPES,
           f"{where}.failure_type: expected 1 (soft), 2 (hard) or 3 (ignored), got {failure_type!r:.40}")
    expect(_is_int(failure_reason) and failure_reason in FAILURE_REASONS,
           f"{where}.failure_reason: expected one of {sorted(FAILURE_REASONS)}, got {failure_reason!r:.40}")
    expect(_is_int(priority) and INT_MIN <= priority <= INT_MAX, f"{where}.priority: expected an integer, got {priority!r:.40}")
    return BounceRuleSpec(pattern, failure_type, failure_reason, priority)


def _mx_rule(item: Any, *, where: str) -> MxRuleSpec:
    where = f"GET /rules {where}"
    expect(isinstance(item, dict), f"{where}: expected an object, got {_shape(item)}")
    expect("mx_mask" in item, f"{where}: missing mx_mask")
    mx_mask = item["mx_mask"]
    expect(_is_name(mx_mask, MAX_NAME_LENGTH),
           f"{where}.mx_mask: expected non-empty text without spaces, at most {MAX_NAME_LENGTH} characters, got {mx_mask!r:.60}")
    limits = {}
    for key in ("max_connections", "max_messages_per_hour"):
        value = item.get(key)
        expect(value is None or (_is_int(value) and 0 <= value <= INT_MAX),
               f"{where}.{key}: expected a non-negative integer or null, got {value!r:.40}")
        limits[key] = value
    options = {key: value for key, value in item.items() if key not in MX_KEYS}
    _check_storable(options, where=f"{where} settings")
    return MxRuleSpec(mx_mask, options=options, **limits)


def _domain_rule(item: Any, *, where: str) -> DomainRuleSpec:
    where = f"GET /rules {where}"
    expect(isinstance(item, dict), f"{where}: expected an object, got {_shape(item)}")
    expect("domain" in item, f"{where}: missing domain")
    domain = item["domain"]
    expect(_is_name(domain, MAX_NAME_LENGTH),
           f"{where}.domain: expected non-empty text without spaces, at most {MAX_NAME_LENGTH} characters, got {domain!r:.60}")
    options = {key: value for key, value in item.items() if key not in DOMAIN_KEYS}
    _check_storable(options, where=f"{where} settings")
    return DomainRuleSpec(domain, options=options)


def _refuse_duplicates(names: list[str], *, what: str, key: str) -> None:
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        folded = name.casefold()
        expect(folded not in seen,
               f"GET /rules {what}[{index}]: {key} {name!r:.60} already given by {what}[{seen.get(folded)}]")
        seen[folded] = index


def _check_storable(value: Any, *, where: str, depth: int = 0) -> None:
    """Settings are stored as JSON: refuse what PostgreSQL's jsonb cannot hold (NUL in text) and
    absurd nesting."""
    expect(depth <= 20, f"{where}: nested more than 20 levels")
    if isinstance(value, str):
        expect("\x00" not in value, f"{where}: text with a NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_storable(key, where=where, depth=depth + 1)
            _check_storable(item, where=where, depth=depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_storable(item, where=where, depth=depth + 1)


def _is_name(value: Any, max_length: int, *, spaces: bool = False) -> bool:
    if not isinstance(value, str) or not 0 < len(value) <= max_length or "\x00" in value:
        return False
    return spaces or not any(character.isspace() for character in value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shape(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", type(None): "null"}.get(type(value), type(value).__name__)
