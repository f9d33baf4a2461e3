"""Typed workflow properties: the parameters an administrator edits and ``--set`` overrides.

Each property parses text (from the CLI or a form) and validates a value (from JSON), so the
admin, the CLI and the engine refuse the same bad values with the same message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError


@dataclass(frozen=True)
class Property:
    name: str
    default: Any
    help: str = ""

    kind = "text"

    def parse(self, text: str) -> Any:
        """Turn text typed by a person into a validated value."""
        return self.validate(text)

    def validate(self, value: Any) -> Any:
        return value

    def error(self, message: str) -> ValidationError:
        return ValidationError(f"{self.name}: {message}")


@dataclass(frozen=True)
class IntegerProperty(Property):
    minimum: int | None = None
    maximum: int | None = None
    unit: str = ""

    kind = "integer"

    def parse(self, text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise self.error(f"expected a whole number, got {text!r}") from None
        return self.validate(value)

    def validate(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"expected a whole number, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise self.error(f"must be at least {self.minimum}{' ' + self.unit if self.unit else ''}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise self.error(f"must be at most {self.maximum}{' ' + self.unit if self.unit else ''}, got {value}")
        return value


@dataclass(frozen=True)
class BooleanProperty(Property):
    kind = "boolean"

    def parse(self, text: str) -> bool:
        value = str(text).strip().lower()
        if value in {"1", "true", "yes", "on"}:
            return True
        if value in {"0", "false", "no", "off"}:
            return False
        raise self.error(f"expected true or false, got {text!r}")

    def validate(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, got {value!r}")
        return value


@dataclass(frozen=True)
class ChoiceProperty(Property):
    choices: tuple[str, ...] = ()

    kind = "choice"

    def validate(self, value: Any) -> str:
        if value not in self.choices:
            raise self.error(f"expected one of {', '.join(self.choices)}, got {value!r}")
        return value


@dataclass(frozen=True)
class TextProperty(Property):
    max_length: int = 200

    def validate(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.error(f"expected text, got {value!r}")
        if len(value) > self.max_length:
            raise self.error(f"at most {self.max_length} characters")
        return value
