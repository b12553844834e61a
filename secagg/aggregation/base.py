"""The aggregator interface: how the server combines client updates into one update.

An aggregator is a *value*: a frozen dataclass that prints, compares and round-trips through
``to_dict``/``from_dict`` (and so JSON). Aggregators compose by nesting, the way TensorFlow
Federated's aggregation factories do: ``ClipNorm(max_norm=1.0, inner=Mean())`` clips every update,
then hands the clipped batch to the mean. Later wrappers (noise, secure sum, robust rules) plug in
the same way, e.g. ``ClipNorm(inner=GaussianNoise(inner=SecureSum()))``.

Anything an aggregator must remember between rounds (adaptive clip norms, momentum, ...) lives in an
explicit state object: a flat ``dict[str, Tensor]`` returned by :meth:`Aggregator.init_state`, passed
into and returned from every :meth:`Aggregator.aggregate` call, and saved in checkpoints. Wrappers
keep their inner aggregator's state under an ``"inner/"`` prefix. No aggregator keeps hidden state or
mutates its input.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from secagg.errors import ConfigError, UpdateError
from secagg.layout import ParamLayout

AggState = dict[str, torch.Tensor]


@dataclass(frozen=True)
class UpdateBatch:
    """The updates of one round: row ``i`` of ``updates`` came from ``client_ids[i]``.

    ``updates``: (n, d) float tensor, one flattened update (delta) per client.
    ``weights``: (n,) float64, the clients' example counts (or any non-negative weights).
    ``round``: the round index; ``seed``: root seed for any non-secret randomness the rule needs.
    ``layout``: how to unflatten a row into named tensors (for per-layer rules); ``None`` when the
    updates are plain vectors.
    """

    updates: torch.Tensor
    weights: torch.Tensor
    client_ids: tuple[int, ...]
    round: int = 0
    seed: int = 0
    layout: ParamLayout | None = None

    def __post_init__(self) -> None:
        u, w = self.updates, self.weights
        if not isinstance(u, torch.Tensor) or u.dim() != 2:
            raise UpdateError("updates: expected a 2-D tensor (clients, dim)")
        if not u.is_floating_point():
            raise UpdateError(f"updates: expected a float tensor, got {u.dtype}")
        n = u.shape[0]
        if n < 1:
            raise UpdateError("updates: need at least 1 client update, got 0")
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (n,):
            raise UpdateError(f"weights: expected shape ({n},), got "
                              f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
        if self.layout is not None and self.layout.dim != u.shape[1]:
            raise UpdateError(f"updates: layout describes {self.layout.dim} coordinates, "
                              f"rows have {u.shape[1]}")
        if len(self.client_ids) != n:
            raise UpdateError(f"client_ids: expected {n} ids, got {len(self.client_ids)}")
        if not torch.isfinite(w).all() or (w < 0).any():
            raise UpdateError("weights: must be finite and >= 0")
        bad = _nonfinite_rows(u)
        if bad:
            ids = [self.client_ids[i] for i in bad]
            raise UpdateError(f"updates: non-finite values (NaN/Inf) from client(s) {ids}")

    @property
    def num_clients(self) -> int:
        return int(self.updates.shape[0])

    @property
    def dim(self) -> int:
        return int(self.updates.shape[1])

    def replace(self, **changes: Any) -> UpdateBatch:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _nonfinite_rows(u: torch.Tensor) -> list[int]:
    """Indices of the rows of ``u`` holding a NaN or an infinity.

    A NaN or infinity makes its row's sum non-finite, so only rows with a non-finite sum (those, or
    finite rows whose sum overflowed) are checked element by element: ``torch.isfinite`` on the
    whole stack would allocate temporaries of twice its size.
    """
    suspects = (~torch.isfinite(u.sum(dim=1))).nonzero().flatten().tolist()
    return [i for i in suspects if not bool(torch.isfinite(u[i]).all())]


@dataclass(frozen=True)
class Aggregate:
    """What an aggregator returns: the combined update (d,), its new state, and metrics to log."""

    update: torch.Tensor
    state: AggState = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


_REGISTRY: dict[str, type[Aggregator]] = {}


class Aggregator(ABC):
    """Base class of every aggregation rule and wrapper.

    Subclasses are frozen dataclasses declared with a registry name::

        @dataclass(frozen=True)
        class MyRule(Aggregator, kind="my-rule"):
            f: int = 1
            def aggregate(self, batch, state): ...

    Fields must be JSON scalars or nested aggregators; validate them in ``__post_init__`` and raise
    :class:`~secagg.errors.ConfigError` naming the field and the bound.
    """

    kind: ClassVar[str]

    def __init_subclass__(cls, *, kind: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind is not None:
            if kind in _REGISTRY and _REGISTRY[kind].__qualname__ != cls.__qualname__:
                raise ConfigError(f"aggregator kind {kind!r} is already registered")
            cls.kind = kind
            _REGISTRY[kind] = cls

    def init_state(self, dim: int) -> AggState:
        """The state before the first round, for updates of length ``dim`` (stateless: empty)."""
        return {}

    @abstractmethod
    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        """Combine ``batch`` into one update of length ``batch.dim``; never mutate the inputs."""

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., **fields}``, nested aggregators as dicts: JSON-ready."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Aggregator) else value
        return out

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Aggregator:
        """Rebuild an aggregator from :meth:`to_dict` output (validates every field)."""
        if not isinstance(data, Mapping) or "kind" not in data:
            raise ConfigError("aggregator: expected a mapping with a 'kind' field")
        kind = data["kind"]
        if kind not in _REGISTRY:
            raise ConfigError(f"aggregator.kind: unknown {kind!r}; known: "
                              f"{', '.join(sorted(_REGISTRY))}")
        cls = _REGISTRY[kind]
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names - {"kind"})
        if unknown:
            raise ConfigError(f"aggregator {kind!r}: unknown field(s) {', '.join(unknown)}")
        kwargs = {}
        for name in names & set(data):
            value = data[name]
            hint = hints.get(name)
            if isinstance(hint, type) and issubclass(hint, Aggregator):
                value = Aggregator.from_dict(value)
            kwargs[name] = value
        return cls(**kwargs)


class Wrapper(Aggregator):
    """An aggregator that transforms the batch and hands it to an ``inner`` aggregator.

    Subclasses declare the dataclass field ``inner: Aggregator`` and call ``super().__post_init__()``.
    The inner rule's state lives under ``inner/`` in the wrapper's state (so a wrapped stateful
    rule is checkpointed with the run), and its metrics are logged as ``inner/<name>``.
    """

    inner: Aggregator

    def __post_init__(self) -> None:
        if not isinstance(self.inner, Aggregator):
            raise ConfigError(f"inner: expected an Aggregator, got {type(self.inner).__name__}")

    def init_state(self, dim: int) -> AggState:
        return nest_state("inner", self.inner.init_state(dim))

    def run_inner(self, batch: UpdateBatch, state: AggState, **metrics: float) -> Aggregate:
        """Aggregate ``batch`` with ``inner`` on its part of ``state``; ``metrics`` are the wrapper's own."""
        inner = self.inner.aggregate(batch, unnest_state("inner", state))
        return Aggregate(inner.update, nest_state("inner", inner.state),
                         {**metrics, **{f"inner/{k}": v for k, v in inner.metrics.items()}})


def aggregator_kinds() -> tuple[str, ...]:
    """Names of every registered aggregator."""
    return tuple(sorted(_REGISTRY))


def nest_state(prefix: str, state: Mapping[str, torch.Tensor]) -> AggState:
    """Put an inner aggregator's state under ``prefix/`` inside its wrapper's state."""
    return {f"{prefix}/{k}": v for k, v in state.items()}


def unnest_state(prefix: str, state: Mapping[str, torch.Tensor]) -> AggState:
    """The part of a wrapper's state that belongs to the inner aggregator at ``prefix``."""
    p = f"{prefix}/"
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
