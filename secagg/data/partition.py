"""Split a dataset's sample indices across federated clients.

Four schemes, all deterministic given ``seed`` and all returning a :data:`Partition` (one sorted
``int64`` array of sample indices per client, no client empty; every index in ``0 .. n-1`` used exactly
once, except by the natural split, which uses only its chosen writers'):

* **IID** (:func:`iid_partition`): a uniform random permutation cut into ``num_clients`` parts whose
  sizes differ by at most one.
* **Dirichlet label skew** (:func:`dirichlet_partition`): for each class ``k`` draw client
  proportions ``p_k ~ Dir(alpha, ..., alpha)`` and split that class's shuffled indices across the
  clients in those proportions. Small ``alpha`` gives each client few classes; large ``alpha``
  approaches IID. Yurochkin et al., "Bayesian Nonparametric Federated Learning of Neural Networks",
  ICML 2019; Li et al., "Federated Learning on Non-IID Data Silos: An Experimental Study"
  (NIID-Bench), ICDE 2022.
* **Label shards** (:func:`shard_partition`): sort the indices by label, cut them into
  ``num_clients * shards_per_client`` contiguous shards and deal each client ``shards_per_client``
  random shards, so each client sees at most about ``shards_per_client`` labels. McMahan et al.,
  "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017.
* **Natural** (:func:`natural_partition`): for data sets with writers (LEAF's FEMNIST), each client is
  one writer: ``num_clients`` writers drawn at random (seeded, without replacement) from those in the
  data, client ``i`` the ``i``-th of them in writer order, holding all that writer's examples. The
  other writers' examples are in no part. Caldas et al., "LEAF: A Benchmark for Federated Settings",
  2018.

:func:`label_skew` measures how non-IID a partition is, and :class:`PartitionConfig` is the
serialisable choice of scheme. Randomness here comes from a seeded NumPy generator: data
partitioning is not a secret, so no cryptographic generator is needed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from secagg.errors import ConfigError, DataError
from secagg.seeding import numpy_rng
from secagg.validation import check_choice, check_int, check_keys, check_real

__all__ = [
    "Partition",
    "PartitionConfig",
    "dirichlet_partition",
    "iid_partition",
    "label_skew",
    "natural_partition",
    "shard_partition",
]

Partition = tuple[np.ndarray, ...]
"""One ``int64`` array of sample indices per client, each sorted ascending."""

KINDS = ("iid", "dirichlet", "shards", "natural")


def _int(field: str, value: Any, *, minimum: int | None = None) -> int:
    """``check_int`` that also accepts NumPy integer scalars."""
    if isinstance(value, np.integer):
        value = int(value)
    return check_int(field, value, minimum=minimum)


def _check_labels(labels: Any) -> np.ndarray:
    """Return ``labels`` as a non-empty 1-D integer array; raise :class:`DataError` otherwise."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"labels: must be a 1-D integer array, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise DataError(f"labels: must be a 1-D integer array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise DataError("labels: must be non-empty, got 0 samples")
    return arr


def _check_clients(num_clients: Any, num_samples: int) -> int:
    num_clients = _int("num_clients", num_clients, minimum=1)
    if num_samples < num_clients:
        raise DataError(f"num_clients: {num_clients} clients need at least {num_clients} samples, "
                        f"got {num_samples}")
    return num_clients


def _split_by_owner(owner: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Group sample indices by ``owner[i]``; each group comes out sorted ascending."""
    order = np.argsort(owner, kind="stable").astype(np.int64)
    sizes = np.bincount(owner, minlength=num_clients)
    return np.split(order, np.cumsum(sizes)[:-1])


def iid_partition(num_samples: int, num_clients: int, *, seed: int) -> Partition:
    """Split ``range(num_samples)`` uniformly at random into ``num_clients`` near-equal parts.

    Part sizes differ by at most one. Raises :class:`DataError` if ``num_samples < num_clients``
    and :class:`ConfigError` for non-integer or out-of-range arguments.
    """
    num_samples = _int("num_samples", num_samples, minimum=0)
    num_clients = _check_clients(num_clients, num_samples)
    seed = _int("seed", seed, minimum=0)
    rng = np.random.default_rng(seed)  # not secret: data partitioning
    perm = rng.permutation(num_samples).astype(np.int64)
    return tuple(np.sort(part) for part in np.array_split(perm, num_clients))


def dirichlet_partition(labels: np.ndarray, num_clients: int, alpha: float, *,
                        seed: int) -> Partition:
    """Label-skewed non-IID split: per class, client shares are drawn from ``Dir(alpha)``.

    For each class ``k`` (in ascending label order) the class's indices are shuffled, a proportion
    vector ``p_k ~ Dirichlet(alpha * ones(num_clients))`` is drawn, and the shuffled indices are cut
    at ``floor(cumsum(p_k) * n_k)``, client ``j`` taking the ``j``-th piece. ``alpha > 0`` is the
    concentration: smaller means more skew.

    Repair (so no client is empty): while some client is empty, take the lowest-id empty client and
    move to it the highest sample index held by the currently largest client (ties go to the lowest
    client id). This needs ``len(labels) >= num_clients``, which is checked (:class:`DataError`).
    """
    labels = _check_labels(labels)
    num_clients = _check_clients(num_clients, labels.size)
    alpha = check_real("alpha", alpha, gt=0)
    seed = _int("seed", seed, minimum=0)
    rng = np.random.default_rng(seed)  # not secret: data partitioning

    _, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(-1)
    by_class = np.argsort(inverse, kind="stable")
    class_sizes = np.bincount(inverse)
    owner = np.empty(labels.size, dtype=np.int64)
    concentration = np.full(num_clients, alpha)
    for idx in np.split(by_class, np.cumsum(class_sizes)[:-1]):
        idx = rng.permutation(idx)
        p = rng.dirichlet(concentration)
        if not np.all(np.isfinite(p)) or p.sum() <= 0:  # tiny alpha can underflow every gamma draw
            p = np.zeros(num_clients)
            p[rng.integers(num_clients)] = 1.0
        cuts = np.clip(np.floor(np.cumsum(p)[:-1] * idx.size).astype(np.int64), 0, idx.size)
        sizes = np.diff(np.concatenate(([0], cuts, [idx.size])))
        owner[idx] = np.repeat(np.arange(num_clients, dtype=np.int64), sizes)

    parts = _split_by_owner(owner, num_clients)
    sizes = np.array([part.size for part in parts])
    for empty in np.flatnonzero(sizes == 0):
        donor = int(np.argmax(sizes))  # argmax returns the lowest id among ties
        parts[empty] = parts[donor][-1:].copy()
        parts[donor] = parts[donor][:-1]
        sizes[empty], sizes[donor] = 1, sizes[donor] - 1
    return tuple(parts)


def shard_partition(labels: np.ndarray, num_clients: int, shards_per_client: int, *,
                    seed: int) -> Partition:
    """McMahan et al. (2017) label shards: each client gets ``shards_per_client`` sorted shards.

    Indices are stable-sorted by label after a seeded shuffle (so ties are in random order), cut
    into ``num_clients * shards_per_client`` contiguous shards with :func:`numpy.array_split`
    (sizes differ by at most one, every index used), and shards are dealt to clients by a seeded
    permutation.
    Raises :class:`DataError` if there are fewer samples than shards.
    """
    labels = _check_labels(labels)
    num_clients = _check_clients(num_clients, labels.size)
    shards_per_client = _int("shards_per_client", shards_per_client, minimum=1)
    seed = _int("seed", seed, minimum=0)
    num_shards = num_clients * shards_per_client
    if labels.size < num_shards:
        raise DataError(f"shards_per_client: {num_clients} clients x {shards_per_client} shards "
                        f"need at least {num_shards} samples, got {labels.size}")
    rng = np.random.default_rng(seed)  # not secret: data partitioning
    shuffled = rng.permutation(labels.size).astype(np.int64)
    order = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(order, num_shards)
    deal = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return tuple(np.sort(np.concatenate([shards[s] for s in row])) for row in deal)


def natural_partition(writers: np.ndarray, num_clients: int, *, seed: int) -> Partition:
    """One writer per client: ``writers[i]`` is the writer (an integer id) of sample ``i``.

    ``num_clients`` distinct writers are drawn uniformly without replacement (seeded), sorted by id,
    and client ``j`` gets every sample of the ``j``-th. Raises :class:`DataError` when the data has
    fewer writers than ``num_clients``.
    """
    writers = _check_labels(writers)
    num_clients = _int("num_clients", num_clients, minimum=1)
    seed = _int("seed", seed, minimum=0)
    ids, inverse = np.unique(writers, return_inverse=True)
    if ids.size < num_clients:
        raise DataError(f"num_clients: the natural partition gives each client one writer; the data has "
                        f"{ids.size} writers, asked for {num_clients} clients")
    chosen = np.sort(numpy_rng(seed, "natural").choice(ids.size, size=num_clients, replace=False))
    parts = _split_by_owner(inverse.reshape(-1).astype(np.int64), ids.size)
    return tuple(parts[int(w)] for w in chosen)


def label_skew(partition: Partition, labels: np.ndarray) -> float:
    """Mean over clients of the total-variation distance to the global label distribution.

    The global distribution is that of all partitioned samples (the union of the parts). Returns a
    value in ``[0, 1]``: ``0`` when every client has the global label mix. Raises
    :class:`DataError` for an empty partition, an empty client or an index outside ``labels``.
    """
    labels = _check_labels(labels)
    if len(partition) == 0:
        raise DataError("partition: must contain at least one client, got 0")
    parts = [np.asarray(part) for part in partition]
    for client, part in enumerate(parts):
        if part.ndim != 1 or part.size == 0 or part.dtype.kind not in "iu":
            raise DataError(f"partition: client {client} must hold a non-empty 1-D integer index "
                            f"array, got shape {part.shape} dtype {part.dtype}")
        if part.min() < 0 or part.max() >= labels.size:
            raise DataError(f"partition: client {client} has an index outside "
                            f"[0, {labels.size - 1}]")
    sizes = np.array([part.size for part in parts])
    _, inverse = np.unique(labels[np.concatenate(parts)], return_inverse=True)
    inverse = inverse.reshape(-1)
    num_classes = int(inverse.max()) + 1
    client = np.repeat(np.arange(len(parts)), sizes)
    counts = np.bincount(client * num_classes + inverse, minlength=len(parts) * num_classes)
    local = counts.reshape(len(parts), num_classes) / sizes[:, None]
    global_ = np.bincount(inverse, minlength=num_classes) / inverse.size
    return float(np.mean(0.5 * np.abs(local - global_).sum(axis=1)))


@dataclass(frozen=True)
class PartitionConfig:
    """Which partition scheme to use, and its parameters (validated on construction).

    ``kind`` is one of ``"iid"``, ``"dirichlet"``, ``"shards"``, ``"natural"`` (one writer per
    client: only for data sets with writers, see :meth:`split`); ``alpha`` (finite, > 0) is the
    Dirichlet concentration, used only by ``"dirichlet"``; ``shards_per_client`` (>= 1) is used
    only by ``"shards"``. Every field is validated whatever the kind. Raises :class:`ConfigError`.
    """

    kind: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2

    def __post_init__(self) -> None:
        check_choice("partition.kind", self.kind, KINDS)
        object.__setattr__(self, "alpha", check_real("partition.alpha", self.alpha, gt=0))
        object.__setattr__(self, "shards_per_client",
                           _int("partition.shards_per_client", self.shards_per_client, minimum=1))

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartitionConfig:
        """Build from :meth:`to_dict` output; unknown keys raise :class:`ConfigError`."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        return cls(**check_keys("partition", data, allowed))

    def split(self, labels: np.ndarray, num_clients: int, *, seed: int,
              writers: np.ndarray | None = None) -> Partition:
        """Partition ``range(len(labels))`` across ``num_clients`` with this scheme. ``writers``: each
        sample's writer, for ``"natural"`` (which raises :class:`DataError` without them); the other
        schemes ignore it."""
        labels = _check_labels(labels)
        if self.kind == "natural":
            if writers is None:
                raise DataError("partition.kind: 'natural' gives each client one writer, and this data "
                                "set has no writers (only femnist has)")
            if np.shape(writers) != labels.shape:
                raise DataError(f"writers: must give one writer per sample ({labels.size}), got shape "
                                f"{np.shape(writers)}")
            return natural_partition(writers, num_clients, seed=seed)
        if self.kind == "iid":
            return iid_partition(labels.size, num_clients, seed=seed)
        if self.kind == "dirichlet":
            return dirichlet_partition(labels, num_clients, self.alpha, seed=seed)
        if self.kind == "shards":
            return shard_partition(labels, num_clients, self.shards_per_client, seed=seed)
        raise ConfigError(f"kind: must be one of {', '.join(map(repr, KINDS))}, got {self.kind!r}")
