"""Flattening a model's state dict into one update vector, and back.

Aggregators, secure aggregation and DP all work on one flat vector per client. A
:class:`ParamLayout` records which state-dict entries go into that vector, in what order, with what
shape and dtype, so the vector can be turned back into tensors exactly.

Buffer policy (decided here, once, for the whole library):

* Trainable parameters always go into the vector, first, in ``named_parameters()`` order.
* Floating-point buffers (BatchNorm ``running_mean``/``running_var``) follow the parameters when the
  policy is ``"aggregate"`` (the default, as in plain FedAvg): they are averaged with the same rule,
  and travel through the same secure sum and clipping, because a client's batch statistics describe
  its data just as its weights do. With ``"frozen"`` they are left out: clients train with the global
  buffers and their local changes are discarded (the server's buffers never change).
* Integer and boolean buffers (``num_batches_tracked``) never leave the server: averaging a counter
  is meaningless. The server keeps its own copy.
* Normalization layers (``norm_layers``): ``"federated"`` (the default) treats BatchNorm like any
  layer; ``"local"`` is FedBN (Li et al., ICLR 2021): every parameter and buffer of every BatchNorm
  module stays on its client (:attr:`ParamLayout.local` names them) and never enters the vector, so
  nothing of a client's normalization layers leaves it, not even inside a sum.

SCAFFOLD (Karimireddy et al., ICML 2020) widens the update: :meth:`ParamLayout.with_controls` appends
one ``"control"`` entry per parameter (named ``control/<parameter>``), so a client's control-variate
change travels in the same vector, through the same sum, as its model change.

The vector dtype is float32 unless some entry is float64, in which case it is float64, so every
float16/bfloat16/float32/float64 entry round-trips bit-exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from secagg.errors import ConfigError, UpdateError
from secagg.validation import check_choice

BufferPolicy = Literal["aggregate", "frozen"]
BUFFER_POLICIES: tuple[str, ...] = ("aggregate", "frozen")
NormPolicy = Literal["federated", "local"]
NORM_POLICIES: tuple[str, ...] = ("federated", "local")
#: the prefix of the control-variate entries of a SCAFFOLD layout (``control/<parameter name>``)
CONTROL_PREFIX = "control/"
SpecKind = Literal["parameter", "buffer", "control"]

_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (for JSON)."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorSpec:
    """One state-dict entry inside the flat vector: ``vector[offset : offset + numel]``."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: SpecKind
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def local_entries(model: torch.nn.Module, norm_layers: NormPolicy = "federated") -> tuple[str, ...]:
    """The state-dict names that stay on the client under ``norm_layers``: with ``"local"`` (FedBN),
    every parameter and buffer (counters included) of every BatchNorm module, in state-dict order;
    none with ``"federated"``. A model without BatchNorm under ``"local"`` is a :class:`ConfigError`
    (FedBN would change nothing, which is never what was meant)."""
    check_choice("norm_layers", norm_layers, NORM_POLICIES)
    if norm_layers == "federated":
        return ()
    prefixes = [name for name, m in model.named_modules()
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not prefixes:
        raise ConfigError(f"norm_layers: 'local' (FedBN) keeps BatchNorm layers on the clients, but "
                          f"{type(model).__name__} has no BatchNorm layer")
    return tuple(name for name in model.state_dict()
                 if any(name.startswith(f"{p}.") or not p for p in prefixes))


@dataclass(frozen=True)
class ParamLayout:
    """Order, shapes and dtypes of the entries in a flat update vector (parameters first, then
    buffers, then control variates), and ``local``: the state-dict entries that never enter it
    because they stay on the client (FedBN)."""

    specs: tuple[TensorSpec, ...]
    local: tuple[str, ...] = ()

    @classmethod
    def from_module(cls, model: torch.nn.Module, buffers: BufferPolicy = "aggregate",
                    norm_layers: NormPolicy = "federated") -> ParamLayout:
        """Layout of ``model``'s trainable parameters, plus its float buffers under ``"aggregate"``,
        less the entries :func:`local_entries` keeps on the client under ``norm_layers``."""
        check_choice("buffers", buffers, BUFFER_POLICIES)
        local = local_entries(model, norm_layers)
        entries: list[tuple[str, torch.Tensor, SpecKind]] = [
            (name, p, "parameter") for name, p in model.named_parameters() if p.requires_grad
        ]
        if buffers == "aggregate":
            entries += [(name, b, "buffer") for name, b in model.named_buffers()
                        if b.is_floating_point()]
        entries = [e for e in entries if e[0] not in local]
        for name, t, _ in entries:
            if t.dtype not in _DTYPES.values():
                raise UpdateError(f"{name}: dtype {dtype_name(t.dtype)} cannot be federated; "
                                  f"supported: {', '.join(_DTYPES)}")
        specs, offset = [], 0
        for name, t, kind in entries:
            spec = TensorSpec(name, tuple(t.shape), t.dtype, kind, offset)
            specs.append(spec)
            offset += spec.numel
        return cls(tuple(specs), local)

    def with_controls(self) -> ParamLayout:
        """This layout widened for SCAFFOLD: one ``"control"`` entry per parameter entry (same shape,
        the vector's dtype), named ``control/<parameter>``, after every other entry. Idempotent."""
        if self.has_controls:
            return self
        specs, offset = list(self.specs), self.dim
        for s in self.specs:
            if s.kind == "parameter":
                specs.append(TensorSpec(CONTROL_PREFIX + s.name, s.shape, self.dtype, "control", offset))
                offset += s.numel
        return ParamLayout(tuple(specs), self.local)

    @property
    def has_controls(self) -> bool:
        """Whether the vector carries SCAFFOLD control variates (:meth:`with_controls`)."""
        return any(s.kind == "control" for s in self.specs)

    @property
    def model(self) -> ParamLayout:
        """The layout of the model's own entries: this one without the control entries (the leading
        :attr:`model_dim` coordinates of the vector)."""
        if not self.has_controls:
            return self
        return ParamLayout(tuple(s for s in self.specs if s.kind != "control"), self.local)

    @property
    def model_dim(self) -> int:
        """Length of the leading slice that holds the model's parameters and buffers."""
        return sum(s.numel for s in self.specs if s.kind != "control")

    @property
    def control_names(self) -> tuple[str, ...]:
        """The names of the control entries, in vector order (empty without SCAFFOLD)."""
        return tuple(s.name for s in self.specs if s.kind == "control")

    @property
    def dim(self) -> int:
        """Length of the flat vector."""
        return sum(s.numel for s in self.specs)

    @property
    def num_parameters(self) -> int:
        """Length of the leading slice that holds trainable parameters (buffers follow it)."""
        return sum(s.numel for s in self.specs if s.kind == "parameter")

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the flat vector: float64 if any entry is float64, else float32."""
        return torch.float64 if any(s.dtype == torch.float64 for s in self.specs) else torch.float32

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def flatten(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate the layout's entries of ``state`` into one new 1-D tensor of :attr:`dtype`.

        Entries of ``state`` outside the layout (integer buffers) are ignored; a missing entry or one
        with another shape or dtype raises :class:`UpdateError`.
        """
        parts = []
        for spec in self.specs:
            if spec.name not in state:
                raise UpdateError(f"state dict is missing entry {spec.name!r}")
            t = state[spec.name]
            if not isinstance(t, torch.Tensor):
                raise UpdateError(f"{spec.name}: expected a tensor, got {type(t).__name__}")
            if tuple(t.shape) != spec.shape or t.dtype != spec.dtype:
                raise UpdateError(f"{spec.name}: expected shape {spec.shape} {dtype_name(spec.dtype)}, "
                                  f"got {tuple(t.shape)} {dtype_name(t.dtype)}")
            parts.append(t.detach().reshape(-1).to(device="cpu", dtype=self.dtype))
        if not parts:
            return torch.zeros(0, dtype=self.dtype)
        return torch.cat(parts)

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector back into new tensors with each entry's shape and dtype."""
        if not isinstance(vector, torch.Tensor) or vector.dim() != 1:
            raise UpdateError("vector: expected a 1-D tensor")
        if vector.numel() != self.dim:
            raise UpdateError(f"vector: expected length {self.dim}, got {vector.numel()}")
        return {
            s.name: vector[s.offset : s.offset + s.numel].reshape(s.shape).to(s.dtype).clone()
            for s in self.specs
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (for checkpoints and, later, the wire)."""
        out: dict[str, Any] = {"specs": [{"name": s.name, "shape": list(s.shape),
                                          "dtype": dtype_name(s.dtype), "kind": s.kind}
                                         for s in self.specs]}
        if self.local:
            out["local"] = list(self.local)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParamLayout:
        specs, offset = [], 0
        try:
            for entry in data["specs"]:
                dtype = _DTYPES[entry["dtype"]]
                kind = check_choice("kind", entry["kind"], ("parameter", "buffer", "control"), UpdateError)
                shape = tuple(int(x) for x in entry["shape"])
                if any(x < 0 for x in shape):
                    raise UpdateError(f"{entry['name']}: negative dimension in shape {shape}")
                spec = TensorSpec(str(entry["name"]), shape, dtype, kind, offset)
                specs.append(spec)
                offset += spec.numel
            local = tuple(str(name) for name in data.get("local", ()))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UpdateError(f"malformed layout description: {exc!r}") from exc
        return cls(tuple(specs), local)
