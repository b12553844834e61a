"""Dict/JSON round trip for the library's frozen-dataclass configurations.

A configuration is a value: ``to_plain`` turns it into JSON-ready dicts (nested configs and
aggregators included) and ``from_plain`` rebuilds it, rejecting unknown keys and re-running every
field check, so a config read from a file is validated exactly like one built in code.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from secagg.registry import registered_type
from secagg.validation import check_keys

T = TypeVar("T")


def to_plain(obj: Any) -> dict[str, Any]:
    """Nested dicts of JSON scalars for a config dataclass."""
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_plain(value)
    return value


def from_plain(cls: type[T], data: Any, where: str = "config") -> T:
    """Build ``cls`` from :func:`to_plain` output; missing fields take their defaults."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    check_keys(where, data, names)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        value, hint = data[name], hints[name]
        plugin = registered_type(hint)
        if plugin is not None:
            value = None if value is None else plugin.from_dict(value)
        elif isinstance(hint, type) and hasattr(hint, "from_dict"):
            value = hint.from_dict(value)
        elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
            value = from_plain(hint, value, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)
