"""A Flower ``ArrayRecord`` as one flat update vector, and back.

Whatever framework the user's model lives in, Flower ships it as named arrays (``.npy`` bytes, loaded
with ``allow_pickle=False``). The pipeline works on one flat float vector per client, so
:class:`ArraysLayout` records which arrays go into it, in the record's order: every floating-point
array (float16/32/64), as :class:`~secagg.layout.ParamLayout` entries. Integer and boolean arrays
(a BatchNorm counter) never leave the server: the server keeps the global model's copy, as the
library's own buffer policy does. Arrays named in ``local`` (FedBN: a model's BatchNorm arrays) stay
out of the vector too: each client keeps its own, and the server's copy never changes. A peer's
record is checked against the layout (names, dtypes and shapes as claimed *and* as decoded) before
anything is allocated from it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import torch

from secagg.errors import ConfigError, UpdateError
from secagg.layout import ParamLayout

__all__ = ["ArraysLayout", "fingerprint", "local_names"]

_FLOATS = {"float16", "float32", "float64"}


@dataclass(frozen=True)
class ArraysLayout:
    """Which arrays of a model's ``ArrayRecord`` form the flat vector (``layout``), and the shapes and
    dtypes of all of them (``entries``: name -> (dtype name, shape), in the record's order)."""

    layout: ParamLayout
    entries: tuple[tuple[str, str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, record, local: Collection[str] = ()) -> ArraysLayout:
        """The layout of the global model's ``record`` (an ``ArrayRecord``), without the arrays named in
        ``local`` (kept on the clients, FedBN); :class:`UpdateError` for a record with no
        floating-point array to federate, :class:`ConfigError` for a ``local`` name the record lacks
        or holds as a non-float array."""
        local = tuple(local)
        entries, specs = [], []
        for name, array in record.items():
            dtype, shape = str(array.dtype), tuple(int(s) for s in array.shape)
            entries.append((str(name), dtype, shape))
            if dtype in _FLOATS and str(name) not in local:
                specs.append({"name": str(name), "shape": list(shape), "dtype": dtype, "kind": "parameter"})
        floats = {name for name, dtype, _ in entries if dtype in _FLOATS}
        for name in local:
            if name not in floats:
                raise ConfigError(f"local_arrays: {name!r} is not a floating-point array of the model "
                                  f"(its float arrays: {sorted(floats)[:8]})")
        if not specs:
            raise UpdateError("arrays: the model has no floating-point array to federate")
        return cls(ParamLayout.from_dict({"specs": specs, "local": list(local)}), tuple(entries))

    @property
    def dim(self) -> int:
        """Length of the flat vector."""
        return self.layout.dim

    def tensors(self, record, *, what: str = "arrays") -> dict[str, torch.Tensor]:
        """The floating-point arrays of ``record`` as tensors, checked against this layout (the same
        names, dtypes and shapes, as claimed and as decoded): :class:`UpdateError` naming ``what`` and
        the array otherwise."""
        names = [name for name, _, _ in self.entries]
        got = list(record.keys()) if hasattr(record, "keys") else None
        if got is None or sorted(map(str, got)) != sorted(names):
            raise UpdateError(f"{what}: expected the arrays {names[:8]}{'...' if len(names) > 8 else ''}, "
                              f"got {None if got is None else [str(g) for g in got][:8]}")
        out = {}
        for spec in self.layout.specs:
            array = record[spec.name]
            want = (str(spec.dtype).removeprefix("torch."), spec.shape)
            claimed = (str(getattr(array, "dtype", "")), tuple(getattr(array, "shape", ()) or ()))
            if claimed != want:
                raise UpdateError(f"{what}[{spec.name!r}]: expected {want[0]} {want[1]}, got {claimed[0]} "
                                  f"{claimed[1]}")
            try:
                value = array.numpy()
            except Exception as exc:  # any decoding failure of a peer's bytes is a bad record
                raise UpdateError(f"{what}[{spec.name!r}]: not a valid array "
                                  f"({type(exc).__name__})") from None
            if not isinstance(value, np.ndarray) or (str(value.dtype), tuple(value.shape)) != want:
                raise UpdateError(f"{what}[{spec.name!r}]: its bytes hold another dtype or shape than it "
                                  f"claims")
            out[spec.name] = torch.from_numpy(value.copy(order="C"))  # (ascontiguousarray makes 0-d 1-d)
        return out

    def flatten(self, record, *, what: str = "arrays") -> torch.Tensor:
        """The flat vector (the layout's dtype) of ``record``'s floating-point arrays."""
        return self.layout.flatten(self.tensors(record, what=what))

    def unflatten(self, vector: torch.Tensor, template):
        """An ``ArrayRecord`` with ``vector``'s values in the floating-point arrays and ``template``'s
        (the global model's) in the others."""
        from flwr.app import Array, ArrayRecord

        values = self.layout.unflatten(vector)
        arrays = {}
        for name, _, _ in self.entries:
            if name in values:
                arrays[name] = Array(values[name].numpy())
            else:
                arrays[name] = template[name]
        return ArrayRecord(arrays)


def fingerprint(record) -> bytes:
    """32 bytes that identify a model's ``ArrayRecord``: SHA-256 over every array's name, dtype, shape
    and ``.npy`` bytes in record order (what a client checks the session's ``model_version`` against)."""
    h = hashlib.sha256(b"secagg/flower/model-version/v1")
    for name, array in record.items():
        for part in (str(name).encode(), str(array.dtype).encode(), repr(tuple(array.shape)).encode(),
                     bytes(array.data)):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
    return h.digest()


def local_names(names: Collection[str]) -> tuple[str, ...]:
    """``local_arrays`` as a tuple of distinct names; :class:`ConfigError` for anything else."""
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"local_arrays: expected a collection of array names, got {names!r}")
    out = tuple(dict.fromkeys(names))
    if len(out) != len(tuple(names)):
        raise ConfigError("local_arrays: names an array twice")
    return out
