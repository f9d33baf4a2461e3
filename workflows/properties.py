"""Typed workflow properties: the parameters an administrator edits and ``--set`` overrides.

Each property parses text (from the CLI or a form) and validates a value (from JSON), so the
admin, the CLI, the shell and the engine refuse the same bad values with the same message.

Invariants:

- Every integer property has a finite range, declared where the property is declared: a
  declaration without ``minimum`` and ``maximum`` (or with a default outside them) is refused
  when the module is imported, so an unbounded value can never reach a query or a ``timedelta``.
- A duration (:class:`DurationProperty`) states its unit and may not declare a maximum longer than
  :data:`MAXIMUM_DURATION`, which ``timedelta`` and the databases' date arithmetic handle.
- A text property with a format (:class:`MonthProperty`, :class:`DateTimeProperty`,
  :class:`WordListProperty`) checks it.
- A unit is declared in the plural (``rows``, ``days``) and agrees with its number wherever a
  message or a help text writes one (:func:`quantity`: ``1 row``, ``0 rows``).
- :func:`invalid_values` lists, without raising, what in a stored or overridden mapping no longer
  validates: the engine refuses such a run before it starts, the admin shows it on the page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError

#: The longest duration any property may declare as its maximum: 100 years. Far beyond any
#: retention or delay a workflow needs, while ``now - it`` and ``now + it`` stay valid dates for
#: Python (years 1 to 9999) and for the databases' interval arithmetic; ``timedelta`` itself
#: overflows past 999,999,999 days.
MAXIMUM_DURATION = timedelta(days=36_500)

#: The units a duration is counted in, and one of each.
DURATION_UNITS: dict[str, timedelta] = {
    "ms": timedelta(milliseconds=1),
    "seconds": timedelta(seconds=1),
    "minutes": timedelta(minutes=1),
    "hours": timedelta(hours=1),
    "days": timedelta(days=1),
}

#: :data:`MAXIMUM_DURATION` counted in each unit: the largest maximum a duration may declare
#: (days 36,500; hours 876,000; minutes 52,560,000; ...).
DURATION_CEILINGS: dict[str, int] = {unit: MAXIMUM_DURATION // step for unit, step in DURATION_UNITS.items()}

#: The largest integer any property may declare as its maximum: a 64-bit signed integer, the
#: widest integer column (ids are ``BigAutoField``) a value may be compared with in a query.
MAXIMUM_INTEGER = 2**63 - 1

#: Years a month property accepts: the platform's data cannot be older, and a later year is a typo.
MONTH_YEARS = (2000, 2100)

#: Units whose singular is not the plural less its final "s".
SINGULAR_UNITS = {"ms": "ms"}

#: How much of a refused value a message repeats (a pasted blob must not flood a run's reason).
SHOWN_VALUE_CHARS = 40

MONTH_PATTERN = re.compile(r"(\d{4})-(\d{2})")


def quantity(number: int, unit: str, *, grouped: bool = False) -> str:
    """``number`` with ``unit`` (declared in the plural) agreeing with it: ``1 row``, ``2 rows``,
    ``1 ms``; the bare number without a unit. ``grouped`` writes thousands with commas (``36,500 days``)."""
    text = f"{number:,}" if grouped else str(number)
    if not unit:
        return text
    if abs(number) == 1:
        unit = SINGULAR_UNITS.get(unit, unit[:-1] if unit.endswith("s") else unit)
    return f"{text} {unit}"


def shown(value: Any) -> str:
    """A refused value as a message repeats it: its repr, shortened when long."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**SHOWN_VALUE_CHARS:
        return f"a {len(str(abs(value)))}-digit number"
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[: SHOWN_VALUE_CHARS - 1] + "…"


@dataclass(frozen=True)
class Property:
    name: str
    default: Any
    help: str = ""

    kind = "text"

    def __post_init__(self) -> None:
        try:
            self.validate(self.default)
        except ValidationError as error:
            raise ValueError(f"property {self.name}: the default is not valid: {'; '.join(error.messages)}") from None

    def parse(self, text: str) -> Any:
        """Turn text typed by a person into a validated value."""
        return self.validate(text)

    def validate(self, value: Any) -> Any:
        return value

    def error(self, message: str) -> ValidationError:
        return ValidationError(f"{self.name}: {message}")

    @property
    def range_text(self) -> str:
        """What values are accepted, as the docs and help texts say it ("" when any)."""
        return ""


@dataclass(frozen=True)
class IntegerProperty(Property):
    """A whole number between ``minimum`` and ``maximum``, both required."""

    minimum: int | None = None
    maximum: int | None = None
    unit: str = ""

    kind = "integer"

    def __post_init__(self) -> None:
        if self.minimum is None or self.maximum is None:
            raise ValueError(f"property {self.name}: an integer property needs a minimum and a maximum")
        if not (-MAXIMUM_INTEGER <= self.minimum <= self.maximum <= MAXIMUM_INTEGER):
            raise ValueError(f"property {self.name}: need {-MAXIMUM_INTEGER} <= minimum <= maximum <= {MAXIMUM_INTEGER}")
        super().__post_init__()

    def parse(self, text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:  # also a number of more digits than Python converts
            raise self.error(f"expected a whole number, got {shown(text)}") from None
        return self.validate(value)

    def validate(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"expected a whole number, got {shown(value)}")
        if self.minimum is not None and value < self.minimum:
            raise self.error(f"must be at least {quantity(self.minimum, self.unit)}, got {shown(value)}")
        if self.maximum is not None and value > self.maximum:
            raise self.error(f"must be at most {quantity(self.maximum, self.unit)}, got {shown(value)}")
        return value

    @property
    def range_text(self) -> str:
        return f"{self.minimum:,} to {quantity(self.maximum, self.unit, grouped=True)}"


@dataclass(frozen=True)
class DurationProperty(IntegerProperty):
    """A whole number of ``unit`` (one of :data:`DURATION_UNITS`); the declared maximum may not
    exceed :data:`MAXIMUM_DURATION`, so ``timedelta(**{unit: maximum})`` and ``now - it`` work."""

    kind = "duration"

    def __post_init__(self) -> None:
        if self.unit not in DURATION_UNITS:
            raise ValueError(f"property {self.name}: a duration's unit is one of {', '.join(DURATION_UNITS)}")
        if self.maximum is not None and self.maximum > DURATION_CEILINGS[self.unit]:
            raise ValueError(f"property {self.name}: a duration may not exceed {DURATION_CEILINGS[self.unit]:,} "
                             f"{self.unit} ({MAXIMUM_DURATION.days:,} days)")
        super().__post_init__()

    def as_timedelta(self, value: int) -> timedelta:
        return DURATION_UNITS[self.unit] * value


@dataclass(frozen=True)
class BooleanProperty(Property):
    kind = "boolean"

    def parse(self, text: str) -> bool:
        value = str(text).strip().lower()
        if value in {"1", "true", "yes", "on"}:
            return True
        if value in {"0", "false", "no", "off"}:
            return False
        raise self.error(f"expected true or false, got {shown(text)}")

    def validate(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, got {shown(value)}")
        return value

    @property
    def range_text(self) -> str:
        return "yes or no"


@dataclass(frozen=True)
class ChoiceProperty(Property):
    choices: tuple[str, ...] = ()

    kind = "choice"

    def validate(self, value: Any) -> str:
        if value not in self.choices:
            raise self.error(f"expected one of {', '.join(self.choices)}, got {shown(value)}")
        return value

    @property
    def range_text(self) -> str:
        return ", ".join(self.choices)


@dataclass(frozen=True)
class TextProperty(Property):
    max_length: int = 200

    def validate(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.error(f"expected text, got {shown(value)}")
        if len(value) > self.max_length:
            raise self.error(f"at most {self.max_length} characters, got {len(value)}")
        return value

    @property
    def range_text(self) -> str:
        return f"text, at most {self.max_length} characters"


@dataclass(frozen=True)
class WordListProperty(TextProperty):
    """Comma-separated words or phrases, at least one; each must hold a letter or a digit (a lone
    comma or punctuation would match nothing, or everything once normalised)."""

    kind = "words"

    def validate(self, value: Any) -> str:
        value = super().validate(value)
        items = [item.strip() for item in value.split(",")]
        if not any(items):
            raise self.error("expected at least one word")
        for item in items:
            if item and not any(char.isalnum() for char in item):
                raise self.error(f"each item needs a letter or a digit, got {shown(item)}")
        return value

    @property
    def range_text(self) -> str:
        return f"comma-separated words, at least one, at most {self.max_length} characters"


@dataclass(frozen=True)
class MonthProperty(TextProperty):
    """A calendar month as ``YYYY-MM`` (01 to 12, a year in :data:`MONTH_YEARS`), or empty text
    for the workflow's own choice. Surrounding spaces are dropped."""

    max_length: int = 7

    kind = "month"

    def parse(self, text: str) -> str:
        return self.validate(str(text).strip())

    def validate(self, value: Any) -> str:
        value = super().validate(value)
        if not value.strip():
            return value
        match = MONTH_PATTERN.fullmatch(value.strip())
        if match is None:
            raise self.error(f"expected a month as YYYY-MM, got {shown(value)}")
        year, month = int(match[1]), int(match[2])
        if not 1 <= month <= 12:
            raise self.error(f"MM must be 01 to 12, got {shown(value)}")
        if not MONTH_YEARS[0] <= year <= MONTH_YEARS[1]:
            raise self.error(f"YYYY must be {MONTH_YEARS[0]} to {MONTH_YEARS[1]}, got {shown(value)}")
        return value

    @property
    def range_text(self) -> str:
        return f"YYYY-MM ({MONTH_YEARS[0]}-01 to {MONTH_YEARS[1]}-12), or empty"


@dataclass(frozen=True)
class DateTimeProperty(TextProperty):
    """An ISO 8601 date-time with its UTC offset (``2026-12-01T08:00:00+01:00``), or empty text for
    the workflow's own choice. Surrounding spaces are dropped."""

    max_length: int = 40

    kind = "datetime"

    def parse(self, text: str) -> str:
        return self.validate(str(text).strip())

    def validate(self, value: Any) -> str:
        value = super().validate(value)
        if not value.strip():
            return value
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise self.error(f"expected an ISO date-time such as 2026-12-01T08:00:00+01:00, got {shown(value)}") from None
        if moment.utcoffset() is None:
            raise self.error(f"needs a UTC offset (e.g. +00:00), got {shown(value)}")
        return value

    @property
    def range_text(self) -> str:
        return "an ISO date-time with its UTC offset, or empty"


def invalid_values(declared: Sequence[Property], values: Mapping[str, Any]) -> dict[str, str]:
    """Name → why its value is refused, for each entry of ``values`` (stored on a workflow, or a
    run's overrides) that is not a declared property or does not validate. Empty when all are valid."""
    by_name = {prop.name: prop for prop in declared}
    problems = {}
    for name, value in values.items():
        prop = by_name.get(name)
        if prop is None:
            problems[name] = f"{name}: no such property (known: {', '.join(by_name) or 'none'})"
            continue
        try:
            prop.validate(value)
        except ValidationError as error:
            problems[name] = "; ".join(error.messages)
    return problems
