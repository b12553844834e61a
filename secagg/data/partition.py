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

**Quantity skew** (a few large hospitals, many small ones; :func:`client_sizes`) composes with the
IID, Dirichlet and shard label splits: first each client's size is fixed, then the label scheme fills
those sizes (:func:`quantity_partition`). Two size laws:

* ``"power-law"``: the rank-size (Zipf) law ``size ∝ (rank + 1) ** -quantity_alpha``, ranks dealt to
  clients by a seeded permutation. ``quantity_alpha = 0`` would be equal sizes; 1 is Zipf's law; the
  largest client holds about ``((N + 1) / 2) ** quantity_alpha`` times the median's share. Power-law
  client sizes are the setting of FedProx's synthetic federations (Li et al., "Federated Optimization
  in Heterogeneous Networks", MLSys 2020, whose devices' sample counts follow a power law); the
  deterministic rank law makes the skew a function of ``quantity_alpha`` alone (the seed only deals
  the ranks), so runs at one exponent compare across seeds.
* ``"dirichlet"``: NIID-Bench's quantity skew (Li et al., ICDE 2022): client shares
  ``q ~ Dir(quantity_alpha * ones(N))``, random in shape as well as in order (small ``quantity_alpha``:
  a few clients hold almost everything).

Every client gets ``min_size`` examples first, and the remaining ``n - N * min_size`` are shared in the
law's proportions by the largest-remainder method, so sizes sum to ``n`` exactly.

:func:`label_skew` measures how non-IID a partition's labels are, :func:`size_skew` how unequal its
sizes, :func:`heterogeneity` both; :class:`PartitionConfig` is the serialisable choice of scheme.
Randomness here comes from seeded NumPy generators: data partitioning is not a secret, so no
cryptographic generator is needed. (The four original schemes seed their NumPy generator with the
seed directly, kept so their partitions stay bit-identical; the quantity-skewed splits draw from
:func:`secagg.seeding.numpy_rng`.)
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
    "client_sizes",
    "dirichlet_partition",
    "heterogeneity",
    "iid_partition",
    "label_skew",
    "natural_partition",
    "quantity_partition",
    "shard_partition",
    "size_skew",
]

Partition = tuple[np.ndarray, ...]
"""One ``int64`` array of sample indices per client, each sorted ascending."""

KINDS = ("iid", "dirichlet", "shards", "natural")
QUANTITIES = ("equal", "power-law", "dirichlet")
_NEW_FIELDS = ("quantity", "quantity_alpha", "min_size")  # left out of to_dict at their defaults


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


def _check_min_size(min_size: Any, num_samples: int, num_clients: int) -> int:
    """``min_size`` (>= 1) if ``num_clients`` clients of at least that many examples fit in
    ``num_samples``: :class:`ConfigError` for a bad value, :class:`DataError` naming
    ``partition.min_size`` when they do not fit."""
    min_size = _int("partition.min_size", min_size, minimum=1)
    if num_samples < num_clients * min_size:
        raise DataError(f"partition.min_size: {num_clients} clients of at least {min_size} examples need "
                        f"at least {num_clients * min_size} samples, got {num_samples}")
    return min_size


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
                        seed: int, min_size: int = 1) -> Partition:
    """Label-skewed non-IID split: per class, client shares are drawn from ``Dir(alpha)``.

    For each class ``k`` (in ascending label order) the class's indices are shuffled, a proportion
    vector ``p_k ~ Dirichlet(alpha * ones(num_clients))`` is drawn, and the shuffled indices are cut
    at ``floor(cumsum(p_k) * n_k)``, client ``j`` taking the ``j``-th piece. ``alpha > 0`` is the
    concentration: smaller means more skew.

    Repair (so every client holds at least ``min_size``, default 1: none is empty): for each client
    below ``min_size``, lowest id first, until it has ``min_size``: move to it the highest sample
    indices held by the currently largest client (ties go to the lowest client id), as many as it
    lacks but never taking the donor below ``min_size``. This needs ``len(labels) >=
    num_clients * min_size``, which is checked (:class:`DataError`).
    """
    labels = _check_labels(labels)
    num_clients = _check_clients(num_clients, labels.size)
    alpha = check_real("alpha", alpha, gt=0)
    seed = _int("seed", seed, minimum=0)
    min_size = _check_min_size(min_size, labels.size, num_clients)
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
    for short in np.flatnonzero(sizes < min_size):
        while sizes[short] < min_size:
            donor = int(np.argmax(sizes))  # argmax returns the lowest id among ties
            take = int(min(min_size - sizes[short], sizes[donor] - min_size))  # >= 1: n >= N * min_size
            moved = parts[donor][-take:]
            parts[short] = np.sort(np.concatenate((parts[short], moved))) if sizes[short] else moved.copy()
            parts[donor] = parts[donor][:-take]
            sizes[short], sizes[donor] = sizes[short] + take, sizes[donor] - take
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


def client_sizes(num_samples: int, num_clients: int, quantity: str = "power-law",
                 quantity_alpha: float = 1.0, *, min_size: int = 1, seed: int) -> np.ndarray:
    """Each client's number of examples under a quantity-skew law (``int64``, summing to ``num_samples``).

    ``quantity``: ``"equal"`` (sizes differ by at most one, the larger ones first, as
    :func:`numpy.array_split` cuts), ``"power-law"`` (weight ``(r + 1) ** -quantity_alpha`` for the
    client of rank ``r``, ranks a seeded permutation of ``0 .. N-1``; the rank-size (Zipf) law) or
    ``"dirichlet"`` (weights ``~ Dir(quantity_alpha * ones(N))``, NIID-Bench's quantity skew).
    ``quantity_alpha`` (finite, > 0) is the exponent, respectively the concentration. Every client
    first gets ``min_size`` (>= 1) examples; the other ``num_samples - N * min_size`` are shared in
    proportion to the weights by the largest-remainder method (ties to the lowest client id).

    Deterministic from ``seed`` (:func:`secagg.seeding.numpy_rng` with key ``"quantity"``). Raises
    :class:`DataError` naming ``partition.min_size`` when ``num_samples < num_clients * min_size``,
    :class:`ConfigError` for bad arguments.
    """
    num_samples = _int("num_samples", num_samples, minimum=0)
    num_clients = _check_clients(num_clients, num_samples)
    quantity = check_choice("partition.quantity", quantity, QUANTITIES)
    quantity_alpha = check_real("partition.quantity_alpha", quantity_alpha, gt=0)
    seed = _int("seed", seed, minimum=0)
    min_size = _check_min_size(min_size, num_samples, num_clients)
    if quantity == "equal":
        return np.array([part.size for part in np.array_split(np.arange(num_samples), num_clients)],
                        dtype=np.int64)
    rng = numpy_rng(seed, "quantity")
    if quantity == "power-law":
        weights = (rng.permutation(num_clients) + 1.0) ** -quantity_alpha
    else:
        weights = rng.dirichlet(np.full(num_clients, quantity_alpha))
        if not np.all(np.isfinite(weights)) or weights.sum() <= 0:  # tiny alpha: every gamma underflows
            weights = np.zeros(num_clients)
            weights[rng.integers(num_clients)] = 1.0
    spare = num_samples - num_clients * min_size
    share = weights / weights.sum() * spare
    sizes = np.floor(share).astype(np.int64)
    left = spare - int(sizes.sum())
    # largest fractional part first, ties to the lowest id; ``left`` < 0 only from rounding error
    order = np.lexsort((np.arange(num_clients), -(share - sizes)))
    if left >= 0:
        sizes[order[:left]] += 1
    else:
        for client in np.lexsort((np.arange(num_clients), -sizes))[:-left]:
            sizes[client] -= 1
    return sizes + min_size


def quantity_partition(labels: np.ndarray, sizes: np.ndarray, *, label: str = "iid",
                       alpha: float = 0.5, shards_per_client: int = 2, seed: int) -> Partition:
    """Split ``range(len(labels))`` so that client ``i`` holds exactly ``sizes[i]`` examples, labels
    chosen by the ``label`` scheme (sizes from :func:`client_sizes`; every size >= 1, summing to
    ``len(labels)``):

    * ``"iid"``: a seeded uniform permutation cut into consecutive pieces of ``sizes`` (so each
      client's label mix is a uniform sample of the global one).
    * ``"dirichlet"``: Dirichlet label skew at fixed sizes, as in Acar et al.'s unbalanced Dirichlet
      split (FedDyn, ICLR 2021; FedLab's ``client_inner_dirichlet_partition``): each client draws
      class priors ``p_i ~ Dir(alpha * K * pi)`` (``pi`` the global class frequencies, ``K`` the
      number of classes: mean ``pi``, and ``Dir(alpha * ones(K))`` for balanced classes), then, in a
      seeded client order, takes ``sizes[i]`` examples as multinomial draws from ``p_i`` restricted
      to the classes not yet used up (a draw beyond what is left of a class is cut and redrawn; a
      client whose prior covers no remaining class draws in proportion to what remains). Note that
      this ``alpha`` is a per-client concentration over classes, while the equal-size
      :func:`dirichlet_partition`'s is a per-class concentration over clients (Yurochkin et al.):
      small values mean strong skew in both.
    * ``"shards"``: McMahan's label shards at fixed sizes: client ``i``'s size is cut into
      ``shards_per_client`` near-equal shards, the shards dealt by a seeded permutation as in
      :func:`shard_partition`, and the label-sorted indices cut into shards of those sizes (a client
      smaller than ``shards_per_client`` gets fewer, non-empty shards; a shard larger than a class
      spans several labels, so the large sites see more labels than the small ones).

    Deterministic from ``seed`` (:func:`secagg.seeding.numpy_rng`, keys ``"quantity", label``).
    Raises :class:`DataError` for sizes that do not fit the labels, :class:`ConfigError` for bad
    arguments.
    """
    labels = _check_labels(labels)
    check_choice("partition.kind", label, ("iid", "dirichlet", "shards"))
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or sizes.dtype.kind not in "iu" or sizes.size == 0 or sizes.min() < 1 \
            or int(sizes.sum()) != labels.size:
        raise DataError(f"sizes: must be >= 1 per client and sum to the {labels.size} samples, got "
                        f"{sizes.size} sizes summing to {int(sizes.sum()) if sizes.size else 0}")
    sizes = sizes.astype(np.int64)
    num_clients = sizes.size
    seed = _int("seed", seed, minimum=0)
    rng = numpy_rng(seed, "quantity", label)
    if label == "iid":
        perm = rng.permutation(labels.size).astype(np.int64)
        return tuple(np.sort(part) for part in np.split(perm, np.cumsum(sizes)[:-1]))
    if label == "shards":
        shards_per_client = _int("shards_per_client", shards_per_client, minimum=1)
        num_shards = num_clients * shards_per_client
        shuffled = rng.permutation(labels.size).astype(np.int64)
        order = shuffled[np.argsort(labels[shuffled], kind="stable")]
        deal = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
        shard_sizes = np.empty(num_shards, dtype=np.int64)
        for row, size in zip(deal, sizes, strict=True):
            q, r = divmod(int(size), shards_per_client)  # np.array_split's piece sizes
            shard_sizes[row] = [q + 1] * r + [q] * (shards_per_client - r)
        shards = np.split(order, np.cumsum(shard_sizes)[:-1])
        return tuple(np.sort(np.concatenate([shards[s] for s in row])) for row in deal)
    alpha = check_real("alpha", alpha, gt=0)
    classes, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(-1)
    num_classes = classes.size
    class_sizes = np.bincount(inverse, minlength=num_classes)
    priors = rng.dirichlet(alpha * num_classes * class_sizes / labels.size, size=num_clients)
    bad = ~np.all(np.isfinite(priors), axis=1) | (priors.sum(axis=1) <= 0)
    for client in np.flatnonzero(bad):  # tiny alpha can underflow every gamma draw
        priors[client] = 0.0
        priors[client, rng.integers(num_classes)] = 1.0
    counts = np.zeros((num_clients, num_classes), dtype=np.int64)
    remaining = class_sizes.astype(np.int64)
    for client in rng.permutation(num_clients):
        need = int(sizes[client])
        while need > 0:  # each pass takes >= 1 example: the weights live only where some remain
            avail = remaining - counts[client]
            weights = np.where(avail > 0, priors[client], 0.0)
            if weights.sum() <= 0:
                weights = avail.astype(np.float64)
            draw = np.minimum(rng.multinomial(need, weights / weights.sum()), avail)
            counts[client] += draw
            need -= int(draw.sum())
        remaining -= counts[client]
    owner = np.empty(labels.size, dtype=np.int64)
    by_class = np.argsort(inverse, kind="stable")
    for k, idx in enumerate(np.split(by_class, np.cumsum(class_sizes)[:-1])):
        owner[rng.permutation(idx)] = np.repeat(np.arange(num_clients, dtype=np.int64), counts[:, k])
    return tuple(_split_by_owner(owner, num_clients))


def size_skew(partition: Partition) -> dict[str, float]:
    """How unequal a partition's client sizes are: ``clients``, ``min``, ``median``, ``max``,
    ``max_over_min``, ``gini`` (the Gini coefficient of the sizes: 0 when all are equal, toward 1
    when one client holds everything; ``(N-1)/N`` at most) and ``top20_share`` (the fraction of the
    examples held by the largest ``ceil(N / 5)`` clients: 0.2 for equal sizes).
    :class:`DataError` for an empty partition or an empty client."""
    if len(partition) == 0:
        raise DataError("partition: must contain at least one client, got 0")
    sizes = np.sort(np.array([np.asarray(part).size for part in partition], dtype=np.float64))
    if sizes[0] == 0:
        raise DataError("partition: every client must hold at least one example, got an empty one")
    n = sizes.size
    gini = float(2.0 * np.sum(np.arange(1, n + 1) * sizes) / (n * sizes.sum()) - (n + 1) / n)
    top = int(np.ceil(n / 5))
    return {"clients": n, "min": int(sizes[0]), "median": float(np.median(sizes)), "max": int(sizes[-1]),
            "max_over_min": float(sizes[-1] / sizes[0]), "gini": max(gini, 0.0),
            "top20_share": float(sizes[-top:].sum() / sizes.sum())}


def heterogeneity(partition: Partition, labels: np.ndarray) -> dict[str, Any]:
    """What a run reports of its split: ``{"label_skew": label_skew(...), "sizes": size_skew(...)}``."""
    return {"label_skew": label_skew(partition, labels), "sizes": size_skew(partition)}


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
    only by ``"shards"``.

    Quantity skew (medical federations: a few large hospitals, many small ones): ``quantity`` is
    ``"equal"`` (the default: the four schemes as they always were, bit for bit), ``"power-law"`` or
    ``"dirichlet"`` (see :func:`client_sizes`), with ``quantity_alpha`` (finite, > 0; default 1.0) its
    exponent, respectively its concentration. Skewed sizes compose with ``kind`` ``"iid"``,
    ``"dirichlet"`` and ``"shards"`` (:func:`quantity_partition`); ``"natural"`` keeps whole writers
    (or sites), whose sizes are the data's own, so it takes only ``"equal"``. ``min_size`` (>= 1, default 1)
    examples at least per client, for every kind (:class:`DataError` naming ``partition.min_size`` from
    :meth:`split` when the data cannot give that).

    Every field is validated whatever the kind. Raises :class:`ConfigError`.
    """

    kind: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    quantity: str = "equal"
    quantity_alpha: float = 1.0
    min_size: int = 1

    def __post_init__(self) -> None:
        check_choice("partition.kind", self.kind, KINDS)
        object.__setattr__(self, "alpha", check_real("partition.alpha", self.alpha, gt=0))
        object.__setattr__(self, "shards_per_client",
                           _int("partition.shards_per_client", self.shards_per_client, minimum=1))
        check_choice("partition.quantity", self.quantity, QUANTITIES)
        object.__setattr__(self, "quantity_alpha",
                           check_real("partition.quantity_alpha", self.quantity_alpha, gt=0))
        object.__setattr__(self, "min_size", _int("partition.min_size", self.min_size, minimum=1))
        if self.kind == "natural" and self.quantity != "equal":
            raise ConfigError(f"partition.quantity: the natural partition keeps each writer's (or site's) "
                              f"examples together, so its sizes are the data's own; quantity skew needs kind "
                              f"iid, dirichlet or shards, got quantity={self.quantity!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict of the fields. The quantity-skew fields appear only when they
        differ from their defaults, so a configuration written before they existed, and a checkpoint's
        comparison with it, stay unchanged."""
        out = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.name in _NEW_FIELDS and out[f.name] == f.default:
                del out[f.name]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartitionConfig:
        """Build from :meth:`to_dict` output; unknown keys raise :class:`ConfigError`."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        return cls(**check_keys("partition", data, allowed))

    def split(self, labels: np.ndarray, num_clients: int, *, seed: int,
              writers: np.ndarray | None = None) -> Partition:
        """Partition ``range(len(labels))`` across ``num_clients`` with this scheme. ``writers``: each
        sample's writer, for ``"natural"`` (which raises :class:`DataError` without them); the other
        schemes ignore it. :class:`DataError` naming ``partition.min_size`` when some client would
        hold fewer than ``min_size`` examples."""
        labels = _check_labels(labels)
        parts = self._split(labels, num_clients, seed=seed, writers=writers)
        small = [i for i, part in enumerate(parts) if part.size < self.min_size]
        if small:
            raise DataError(f"partition.min_size: {self.kind} gives client {small[0]} "
                            f"{parts[small[0]].size} examples, fewer than min_size={self.min_size}")
        return parts

    def _split(self, labels: np.ndarray, num_clients: int, *, seed: int,
               writers: np.ndarray | None) -> Partition:
        if self.quantity != "equal" or (self.min_size > 1 and self.kind != "natural"):
            _check_min_size(self.min_size, labels.size, _check_clients(num_clients, labels.size))
        if self.quantity != "equal":
            sizes = client_sizes(labels.size, num_clients, self.quantity, self.quantity_alpha,
                                 min_size=self.min_size, seed=seed)
            return quantity_partition(labels, sizes, label=self.kind, alpha=self.alpha,
                                      shards_per_client=self.shards_per_client, seed=seed)
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
            return dirichlet_partition(labels, num_clients, self.alpha, seed=seed, min_size=self.min_size)
        if self.kind == "shards":
            return shard_partition(labels, num_clients, self.shards_per_client, seed=seed)
        raise ConfigError(f"kind: must be one of {', '.join(map(repr, KINDS))}, got {self.kind!r}")
