"""Hypothesis strategies for federated-learning inputs: update stacks, batches, populations, dropout
schedules, attacker placements and hostile bytes.

Every strategy shrinks towards small, simple cases (few clients, low dimension, values near zero), so
a failing property reports a minimal counterexample. NaN and infinity appear only when asked for
(``allow_nonfinite=True``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from hypothesis import strategies as st

from secagg.aggregation.base import UpdateBatch
from secagg.protocol.messages import Stage

__all__ = [
    "attacker_placements",
    "client_populations",
    "dropout_schedules",
    "hostile_bytes",
    "update_batches",
    "update_stacks",
]

# A fixed pseudo-random pattern added to generated values (scaled far below ``magnitude``) so that the
# rows are in general position: no exact ties between values or distances, even when hypothesis
# shrinks every drawn value to zero. Ties are then present only when ``ties=True`` asks for them.
_JITTER_SEED = 0x5ECA66
_JITTER_SCALE = 1e-3
OUTLIER_FACTOR = 1e4  # how much farther than ``magnitude`` an outlier row sits


def _jitter(n: int, d: int) -> np.ndarray:
    return np.random.default_rng(_JITTER_SEED).standard_normal((n, d))  # not secret: test-data jitter


@st.composite
def update_stacks(draw: st.DrawFn, *, min_clients: int = 1, max_clients: int = 8, min_dim: int = 1,
                  max_dim: int = 6, dtype: torch.dtype = torch.float32, magnitude: float = 1e3,
                  outliers: bool = False, ties: bool = False, allow_nonfinite: bool = False
                  ) -> torch.Tensor:
    """(n, d) update tensors with ``min_clients <= n <= max_clients`` and ``min_dim <= d <= max_dim``.

    Values lie in ``[-magnitude, magnitude]`` (plus a tiny fixed jitter that keeps the rows in general
    position). ``outliers``: some rows (fewer than half) are moved about ``1e4 * magnitude`` away.
    ``ties``: values come from a small pool and rows may repeat, so columns and distances tie.
    ``allow_nonfinite``: NaN, +Inf or -Inf may be injected into a few entries (never otherwise).
    """
    if not 1 <= min_clients <= max_clients or not 1 <= min_dim <= max_dim:
        raise ValueError("update_stacks: need 1 <= min_clients <= max_clients and 1 <= min_dim <= max_dim")
    n = draw(st.integers(min_clients, max_clients))
    d = draw(st.integers(min_dim, max_dim))
    if ties:
        pool = [0.0, magnitude / 2, -magnitude / 2, magnitude]
        rows = draw(st.lists(st.lists(st.sampled_from(pool), min_size=d, max_size=d), min_size=1,
                             max_size=n))
        picks = draw(st.lists(st.integers(0, len(rows) - 1), min_size=n, max_size=n))
        values = np.array([rows[i] for i in picks], dtype=np.float64)
    else:
        flat = draw(st.lists(st.floats(-magnitude, magnitude, allow_nan=False, allow_infinity=False),
                             min_size=n * d, max_size=n * d))
        values = np.array(flat, dtype=np.float64).reshape(n, d)
        values += _JITTER_SCALE * max(magnitude, 1e-30) * _jitter(n, d)
    if outliers and n >= 2:
        far = draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=max(1, (n - 1) // 2)))
        direction = draw(st.sampled_from([1.0, -1.0]))
        for i in far:
            values[i] += direction * OUTLIER_FACTOR * magnitude
    if allow_nonfinite:
        bad = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, d - 1),
                                      st.sampled_from([np.nan, np.inf, -np.inf])), max_size=3))
        for i, j, v in bad:
            values[i, j] = v
    return torch.from_numpy(values).to(dtype)


@st.composite
def client_populations(draw: st.DrawFn, *, min_clients: int = 1, max_clients: int = 8,
                       max_examples: int = 1000, max_id: int = 10_000, allow_zero_examples: bool = False
                       ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(client_ids, example_counts)``: distinct ids in ``[0, max_id]`` (in random order) and each
    client's example count in ``[1, max_examples]`` (``[0, ...]`` with ``allow_zero_examples``)."""
    n = draw(st.integers(min_clients, max_clients))
    ids = draw(st.lists(st.integers(0, max_id), min_size=n, max_size=n, unique=True))
    low = 0 if allow_zero_examples else 1
    counts = draw(st.lists(st.integers(low, max_examples), min_size=n, max_size=n))
    return tuple(ids), tuple(counts)


@st.composite
def update_batches(draw: st.DrawFn, *, min_clients: int = 1, max_clients: int = 8, min_dim: int = 1,
                   max_dim: int = 6, dtype: torch.dtype = torch.float32, magnitude: float = 1e3,
                   outliers: bool = False, ties: bool = False, allow_zero_examples: bool = False
                   ) -> UpdateBatch:
    """:class:`UpdateBatch` values: an :func:`update_stacks` stack, example-count weights (float64) and
    distinct client ids from :func:`client_populations`, a small round index and a seed.

    (Non-finite updates are never generated here: :class:`UpdateBatch` itself rejects them.)
    """
    updates = draw(update_stacks(min_clients=min_clients, max_clients=max_clients, min_dim=min_dim,
                                 max_dim=max_dim, dtype=dtype, magnitude=magnitude, outliers=outliers,
                                 ties=ties))
    n = updates.shape[0]
    ids, counts = draw(client_populations(min_clients=n, max_clients=n,
                                          allow_zero_examples=allow_zero_examples))
    return UpdateBatch(updates, torch.tensor(counts, dtype=torch.float64), ids,
                       round=draw(st.integers(0, 10)), seed=draw(st.integers(0, 2**32 - 1)))


@st.composite
def dropout_schedules(draw: st.DrawFn, client_ids: Sequence[int], threshold: int, *,
                      respect_threshold: bool = True, stages: Sequence[Stage] | None = None
                      ) -> dict[int, Stage]:
    """Who drops out before which stage: ``{client_id: stage}`` (absent clients never drop).

    A client that drops before stage ``s`` sends nothing from ``s`` on. With ``respect_threshold`` at
    least ``threshold`` clients are still present at every stage (at most ``n - threshold`` drop);
    otherwise the schedule deliberately leaves fewer than ``threshold`` clients by the last stage.
    ``stages``: the stages to drop before (default: every :class:`Stage`).
    """
    ids = list(client_ids)
    n = len(ids)
    stages = list(Stage) if stages is None else list(stages)
    if respect_threshold:
        if threshold > n:
            raise ValueError(f"dropout_schedules: threshold {threshold} > {n} clients cannot be respected")
        k = draw(st.integers(0, n - threshold))
    else:
        if threshold < 1:
            raise ValueError("dropout_schedules: a threshold < 1 cannot be violated")
        k = draw(st.integers(max(0, n - threshold + 1), n))
    dropped = draw(st.permutations(ids))[:k]
    return {u: draw(st.sampled_from(stages)) for u in dropped}


def attacker_placements(n: int, f: int) -> st.SearchStrategy[frozenset[int]]:
    """Sets of exactly ``f`` row indices in ``range(n)``: where the attackers sit in the batch."""
    if not 0 <= f <= n:
        raise ValueError(f"attacker_placements: need 0 <= f <= n, got f={f}, n={n}")
    return st.permutations(range(n)).map(lambda p: frozenset(p[:f]))


def hostile_bytes(valid: bytes) -> st.SearchStrategy[bytes]:
    """Corruptions of one valid message: truncations, bit flips, byte overwrites, wrong lengths
    (bytes cut from or inserted in the middle), appended garbage, and arbitrary bytes."""
    valid = bytes(valid)
    size = len(valid)

    def flip(positions: list[tuple[int, int]]) -> bytes:
        b = bytearray(valid)
        for pos, bit in positions:
            b[pos % size] ^= 1 << bit
        return bytes(b)

    def overwrite(pos: int, value: int) -> bytes:
        b = bytearray(valid)
        b[pos % size] = value
        return bytes(b)

    def splice(pos: int, cut: int, insert: bytes) -> bytes:
        pos %= size + 1
        return valid[:pos] + insert + valid[pos + cut:]

    variants = [
        st.integers(0, max(size - 1, 0)).map(lambda k: valid[:k]),
        st.binary(min_size=1, max_size=64).map(lambda g: valid + g),
        st.integers(0, size).map(lambda k: valid[k:]),
        st.binary(max_size=64),
    ]
    if size:
        variants += [
            st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 7)), min_size=1,
                     max_size=4).map(flip),
            st.builds(overwrite, st.integers(0, size - 1), st.integers(0, 255)),
            st.builds(splice, st.integers(0, size), st.integers(0, 8), st.binary(max_size=8)),
        ]
    return st.one_of(*variants).filter(lambda b: b != valid)
