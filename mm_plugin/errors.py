"""One error hierarchy: every message says what is wrong, where, and how to fix it."""

from __future__ import annotations

from collections.abc import Iterable


class MMError(Exception):
    """Base class of every error the plugin raises on purpose."""


class ValidationError(MMError, ValueError):
    """A value given by the user is out of range or inconsistent."""


class UnknownNameError(ValidationError, KeyError):
    """A name (signal, allocation, strategy, rule key, ...) is not registered."""

    def __init__(self, what: str, name: str, allowed: Iterable[str], where: str = "") -> None:
        allowed = sorted(allowed)
        place = f" at {where}" if where else ""
        super().__init__(f"unknown {what} {name!r}{place}; allowed values: {', '.join(allowed)}")
        self.name, self.allowed = name, allowed

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0])


class CalibrationRequiredError(ValidationError):
    """A gradient-based signal or allocation was asked for without calibration data."""


class NoPrunableLayersError(ValidationError):
    """The model has no Conv, Linear or Embedding weight left to prune."""


class RuleError(ValidationError):
    """A sparsity rule is malformed (e.g. min > max, unknown field)."""


class ConfigError(ValidationError):
    """A configuration file or dict is invalid; the message names its JSON path."""


class UnsupportedModelError(MMError):
    """A model or layer cannot be handled by a toolkit; the message names the module."""

    def __init__(self, message: str, *, module: str = "", cls: str = "") -> None:
        super().__init__(message)
        self.module, self.cls = module, cls  # the module at fault and its class name, when known


class ExportVerificationError(MMError):
    """An exported file lost zeros the plan put in (a planned zero is not zero in its constant)."""


def check_fraction(value: float, name: str, *, upper_inclusive: bool = False) -> float:
    """Return ``value`` as float if it lies in [0, 1) (or [0, 1]); raise a ValidationError naming it otherwise."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be a number in [0, 1), got {value!r}") from None
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok:
        bound = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValidationError(f"{name} must lie in {bound}, got {value}")
    return value


def one_line(error: BaseException) -> str:
    """An exception as one line: the first line of its text, after its type unless it is the plugin's own."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, MMError) and lines:
        return lines[0]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
