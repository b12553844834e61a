"""Named, serializable plug-ins: a frozen dataclass registered under a ``kind`` string.

Aggregators, client trainers and other plug-in families derive from :class:`Registered` through a
family root that declares ``family="..."``; each concrete class declares ``kind="..."``. A value then
round-trips through ``to_dict()`` (``{"kind": ..., **fields}``, nested plug-ins as dicts) and
``Family.from_dict(...)``, which validates every field by constructing the class again. Packages
built on top of ``secagg`` (``dp``, ``attacks``) add kinds by subclassing; importing them registers
the kinds, so the core never imports them.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from secagg.errors import ConfigError

R = TypeVar("R", bound="Registered")


class Registered:
    """Base of a plug-in family; see the module docstring."""

    kind: ClassVar[str]
    #: field names a kind used before (old name -> current name), still accepted by :meth:`from_dict`
    renamed: ClassVar[dict[str, str]] = {}
    _family: ClassVar[str]
    _registry: ClassVar[dict[str, type[Registered]]]

    def __init_subclass__(cls, *, family: str | None = None, kind: str | None = None,
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if family is not None:
            cls._family, cls._registry = family, {}
        if kind is not None:
            if kind != kind.lower() or "_" in kind or " " in kind:
                raise ConfigError(f"{cls._family} kind {kind!r}: kinds are lower case with hyphens "
                                  f"(e.g. 'trimmed-mean')")
            known = cls._registry.get(kind)
            if known is not None and known.__qualname__ != cls.__qualname__:
                raise ConfigError(f"{cls._family} kind {kind!r} is already registered")
            cls.kind = kind
            cls._registry[kind] = cls

    @classmethod
    def resolve_kind(cls, kind: Any) -> str | None:
        """The registered kind ``kind`` names, or ``None``. Kinds are spelled with hyphens
        (``"trimmed-mean"``, ``"sign-flip"``); the underscore spellings earlier releases used for
        some of them (``"sign_flip"``, ``"label_flip"``, ...) are still accepted, so existing
        configuration files keep loading."""
        if not isinstance(kind, str):
            return None
        for name in (kind, kind.replace("_", "-")):
            if name in cls._registry:
                return name
        return None

    @classmethod
    def kinds(cls) -> tuple[str, ...]:
        """Every registered kind of this family, sorted."""
        return tuple(sorted(cls._registry))

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., **fields}``, nested plug-ins as dicts: JSON-ready."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Registered) else value
        return out

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        """Rebuild a value of this family from :meth:`to_dict` output (validates every field)."""
        family = cls._family
        if not isinstance(data, Mapping) or "kind" not in data:
            raise ConfigError(f"{family}: expected a mapping with a 'kind' field")
        kind = cls.resolve_kind(data["kind"])
        if kind is None:
            raise ConfigError(f"{family}.kind: unknown {data['kind']!r}; known: "
                              f"{', '.join(sorted(cls._registry))}")
        target = cls._registry[kind]
        for old, new in target.renamed.items():
            if old in data:
                if new in data:
                    raise ConfigError(f"{family} {kind!r}: both {old!r} (the old name) and {new!r} given")
                data = {**{k: v for k, v in data.items() if k != old}, new: data[old]}
        hints = typing.get_type_hints(target)
        names = {f.name for f in dataclasses.fields(target)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names - {"kind"})
        if unknown:
            raise ConfigError(f"{family} {kind!r}: unknown field(s) {', '.join(unknown)}")
        kwargs = {}
        for name in names & set(data):
            value = data[name]
            plugin = registered_type(hints.get(name))
            if plugin is not None and value is not None:
                value = plugin.from_dict(value)
            kwargs[name] = value
        return target(**kwargs)  # type: ignore[return-value]


def registered_type(hint: Any) -> type[Registered] | None:
    """The plug-in family of a field's type hint (``Family`` or ``Family | None``), else ``None``."""
    candidates = typing.get_args(hint) if typing.get_args(hint) else (hint,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, Registered):
            return c
    return None
