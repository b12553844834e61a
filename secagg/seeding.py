"""Deterministic, non-secret seeds for simulation randomness (sampling, shuffling, init).

Every random choice of a training run is derived from the run's root seed and a key path such as
``("sample", round)`` or ``("client", round, client_id)``. There is therefore no mutable generator
state to save: a checkpoint's round counter plus the root seed reproduce every later draw exactly.

These seeds are for reproducible *simulation* only. Cryptographic material (keys, masks, shares) and
privacy noise never come from here; they use ``os.urandom``/``secrets``/``cryptography``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _word(part: int | str) -> int:
    if isinstance(part, str):
        return int.from_bytes(hashlib.sha256(part.encode()).digest()[:4], "little")
    if part < 0:
        raise ValueError(f"seed key parts must be >= 0, got {part}")
    return part


def round_seed(root: int, round_index: int) -> int:
    """The public seed of round ``round_index`` of a run seeded by ``root``: the aggregators' non-secret
    randomness (bucket seating, distributed DP's rotation). Simulation and deployment derive it alike."""
    return derive_seed(root, "aggregate", round_index)


def derive_seed(root: int, *key: int | str) -> int:
    """A 63-bit seed determined by ``root`` and the key path; distinct paths give independent seeds."""
    seq = np.random.SeedSequence(root, spawn_key=tuple(_word(k) for k in key))  # not secret
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def numpy_rng(root: int, *key: int | str) -> np.random.Generator:  # not secret: simulation
    """A numpy Generator for the key path (simulation only: not secret)."""
    return np.random.default_rng(derive_seed(root, *key))  # not secret: simulation


def torch_generator(root: int, *key: int | str) -> torch.Generator:
    """A CPU torch Generator for the key path (simulation only: not secret)."""
    return torch.Generator().manual_seed(derive_seed(root, *key))
