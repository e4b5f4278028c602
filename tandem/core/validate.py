"""Small validators used by config dataclasses in ``__post_init__``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from tandem.core.errors import ConfigError


def positive(field: str, value: float) -> None:
    """Raise ConfigError unless ``value > 0``."""
    if not value > 0:
        raise ConfigError(field, value, "must be > 0")


def non_negative(field: str, value: float) -> None:
    """Raise ConfigError unless ``value >= 0``."""
    if not value >= 0:
        raise ConfigError(field, value, "must be >= 0")


def in_range(field: str, value: float, lo: float, hi: float) -> None:
    """Raise ConfigError unless ``lo <= value <= hi``."""
    if not lo <= value <= hi:
        raise ConfigError(field, value, f"must be in [{lo}, {hi}]")


def stride_of(field: str, value: int, horizon: int, horizon_field: str = "H") -> int:
    """The stride ``value`` stands for (0: ``horizon``, once per chunk).

    Raises:
        ConfigError: unless ``value`` is 0 or a divisor of ``horizon`` (so 1..horizon).
    """
    if value < 0 or (value and horizon % value):
        raise ConfigError(field, value, f"must be in [0, {horizon}] and must divide the horizon: a divisor of "
                                        f"{horizon_field} ({horizon}), or 0 for once per chunk")
    return value or horizon


def one_of(field: str, value: str, allowed: Iterable[str]) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed``, with a "did you mean" hint."""
    allowed = list(allowed)
    if value in allowed:
        return
    hint = difflib.get_close_matches(str(value), allowed, n=1)
    suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise ConfigError(field, value, f"one of {sorted(allowed)}{suffix}")
