"""Checks shared by every config and entry point: each raises a typed error naming field and bound."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from secagg.errors import ConfigError


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_int(field: str, value: Any, *, minimum: int | None = None,
              maximum: int | None = None, error: type[Exception] = ConfigError) -> int:
    """Return ``value`` if it is an int within ``[minimum, maximum]``; raise ``error`` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise error(f"{field}: must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise error(f"{field}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise error(f"{field}: must be <= {maximum}, got {value}")
    return value


def check_real(field: str, value: Any, *, gt: float | None = None, ge: float | None = None,
               lt: float | None = None, le: float | None = None,
               error: type[Exception] = ConfigError) -> float:
    """Return ``float(value)`` if it is a finite real within the given bounds; raise otherwise."""
    if not _is_real(value) or not math.isfinite(value):
        raise error(f"{field}: must be a finite number, got {value!r}")
    if gt is not None and not value > gt:
        raise error(f"{field}: must be > {gt}, got {value}")
    if ge is not None and not value >= ge:
        raise error(f"{field}: must be >= {ge}, got {value}")
    if lt is not None and not value < lt:
        raise error(f"{field}: must be < {lt}, got {value}")
    if le is not None and not value <= le:
        raise error(f"{field}: must be <= {le}, got {value}")
    return float(value)


def check_bool(field: str, value: Any, error: type[Exception] = ConfigError) -> bool:
    """``value`` if it is a ``bool`` (not merely truthy: ``1`` or ``"yes"`` is refused), else ``error``."""
    if not isinstance(value, bool):
        raise error(f"{field}: expected true or false, got {value!r}")
    return value


def check_choice(field: str, value: Any, choices: Iterable[str],
                 error: type[Exception] = ConfigError) -> str:
    """Return ``value`` if it is one of ``choices``; raise naming the allowed values otherwise."""
    allowed = tuple(choices)
    if value not in allowed:
        raise error(f"{field}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def check_keys(where: str, data: Any, allowed: Iterable[str]) -> dict[str, Any]:
    """Check that ``data`` is a dict whose keys are all in ``allowed`` (for ``from_dict``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(allowed))}")
    return data
