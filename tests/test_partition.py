"""Properties of the client data partitioners in :mod:`secagg.data.partition`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.data.partition import (
    PartitionConfig,
    dirichlet_partition,
    iid_partition,
    label_skew,
    shard_partition,
)
from secagg.errors import ConfigError, DataError

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


def assert_valid_partition(partition, num_samples: int, num_clients: int) -> None:
    assert isinstance(partition, tuple)
    assert len(partition) == num_clients
    for part in partition:
        assert isinstance(part, np.ndarray)
        assert part.dtype == np.int64
        assert part.ndim == 1
        assert part.size > 0, "empty client"
        assert np.all(np.diff(part) > 0), "not sorted ascending"
    everything = np.sort(np.concatenate(partition))
    np.testing.assert_array_equal(everything, np.arange(num_samples))


def assert_same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@st.composite
def labels_and_clients(draw, max_samples: int = 300, min_per_client: int = 1):
    """A 1-D int64 label array and a client count it can satisfy."""
    num_classes = draw(st.integers(1, 12))
    n = draw(st.integers(1, max_samples))
    labels = np.array(draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)),
                      dtype=np.int64)
    num_clients = draw(st.integers(1, max(1, n // min_per_client)))
    return labels, num_clients


def balanced_labels(num_classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(num_classes, dtype=np.int64), per_class)


# --- iid -------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.data(), seed=SEEDS)
def test_iid_is_a_balanced_partition(data, seed):
    num_samples = data.draw(st.integers(1, 2000))
    num_clients = data.draw(st.integers(1, num_samples))
    partition = iid_partition(num_samples, num_clients, seed=seed)
    assert_valid_partition(partition, num_samples, num_clients)
    sizes = [part.size for part in partition]
    assert max(sizes) - min(sizes) <= 1
    assert_same(partition, iid_partition(num_samples, num_clients, seed=seed))


def test_iid_seed_changes_partition():
    a = iid_partition(100, 4, seed=0)
    b = iid_partition(100, 4, seed=1)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# --- dirichlet -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(case=labels_and_clients(),
       alpha=st.floats(min_value=1e-3, max_value=1e3, allow_nan=False),
       seed=SEEDS)
def test_dirichlet_is_a_partition(case, alpha, seed):
    labels, num_clients = case
    partition = dirichlet_partition(labels, num_clients, alpha, seed=seed)
    assert_valid_partition(partition, labels.size, num_clients)
    assert_same(partition, dirichlet_partition(labels, num_clients, alpha, seed=seed))


def test_dirichlet_repair_fills_every_client_when_alpha_is_tiny():
    labels = balanced_labels(2, 50)
    partition = dirichlet_partition(labels, 40, 1e-4, seed=3)
    assert_valid_partition(partition, labels.size, 40)


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = balanced_labels(10, 200)
    seeds = range(10)

    def mean_skew(alpha: float) -> float:
        return float(np.mean([label_skew(dirichlet_partition(labels, 20, alpha, seed=s), labels)
                              for s in seeds]))

    skews = [mean_skew(alpha) for alpha in (100.0, 1.0, 0.1)]
    assert skews[0] < skews[1] < skews[2], skews
    iid = np.mean([label_skew(iid_partition(labels.size, 20, seed=s), labels) for s in seeds])
    assert iid < 0.15


# --- shards ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.data(), seed=SEEDS)
def test_shards_is_a_partition(data, seed):
    shards_per_client = data.draw(st.integers(1, 5))
    labels, num_clients = data.draw(labels_and_clients(min_per_client=shards_per_client))
    if labels.size < num_clients * shards_per_client:
        num_clients = max(1, labels.size // shards_per_client)
    if labels.size < shards_per_client:
        shards_per_client = labels.size
    partition = shard_partition(labels, num_clients, shards_per_client, seed=seed)
    assert_valid_partition(partition, labels.size, num_clients)
    assert_same(partition, shard_partition(labels, num_clients, shards_per_client, seed=seed))


@settings(max_examples=40, deadline=None)
@given(num_clients=st.integers(1, 20), shards_per_client=st.integers(1, 4),
       shard_size=st.integers(1, 10), data=st.data(), seed=SEEDS)
def test_shards_give_each_client_at_most_shards_per_client_labels(
        num_clients, shards_per_client, shard_size, data, seed):
    num_shards = num_clients * shards_per_client
    # Split the shards among classes so every class size is a multiple of the shard size.
    shards_per_class = []
    left = num_shards
    while left:
        take = data.draw(st.integers(1, left))
        shards_per_class.append(take)
        left -= take
    labels = np.repeat(np.arange(len(shards_per_class), dtype=np.int64),
                       np.array(shards_per_class) * shard_size)
    labels = labels[np.random.default_rng(seed).permutation(labels.size)]  # order must not matter
    partition = shard_partition(labels, num_clients, shards_per_client, seed=seed)
    assert_valid_partition(partition, labels.size, num_clients)
    for part in partition:
        assert part.size == shards_per_client * shard_size
        assert np.unique(labels[part]).size <= shards_per_client


def test_one_shard_per_client_gives_single_label_clients():
    labels = balanced_labels(5, 30)
    partition = shard_partition(labels, 10, 1, seed=0)
    assert all(np.unique(labels[part]).size == 1 for part in partition)
    assert label_skew(partition, labels) == pytest.approx(0.8)


# --- label_skew ------------------------------------------------------------------------------


def test_label_skew_zero_for_identical_client_distributions():
    labels = np.tile(np.array([0, 1, 1, 2], dtype=np.int64), 6)  # 6 copies of one label mix
    partition = tuple(np.arange(4 * c, 4 * c + 4, dtype=np.int64) for c in range(6))
    assert label_skew(partition, labels) == 0.0


def test_label_skew_half_for_single_class_clients():
    labels = balanced_labels(2, 7)
    partition = (np.flatnonzero(labels == 0), np.flatnonzero(labels == 1))
    assert label_skew(partition, labels) == 0.5


def test_label_skew_uses_only_partitioned_samples():
    labels = np.array([0, 1, 0, 1, 2, 2, 2], dtype=np.int64)
    partition = (np.array([0, 1]), np.array([2, 3]))  # class 2 is never partitioned
    assert label_skew(partition, labels) == 0.0


@settings(max_examples=40, deadline=None)
@given(case=labels_and_clients(), seed=SEEDS)
def test_label_skew_is_in_unit_interval(case, seed):
    labels, num_clients = case
    skew = label_skew(dirichlet_partition(labels, num_clients, 0.3, seed=seed), labels)
    assert 0.0 <= skew <= 1.0


def test_label_skew_rejects_out_of_range_index():
    with pytest.raises(DataError, match="partition"):
        label_skew((np.array([0, 5]),), np.array([0, 1], dtype=np.int64))


# --- errors ----------------------------------------------------------------------------------


LABELS = balanced_labels(3, 10)


@pytest.mark.parametrize("alpha", [0, -1, -0.5])
def test_alpha_must_be_positive(alpha):
    with pytest.raises(ConfigError, match=r"alpha: must be > 0"):
        dirichlet_partition(LABELS, 3, alpha, seed=0)
    with pytest.raises(ConfigError, match=r"alpha: must be > 0"):
        PartitionConfig(kind="dirichlet", alpha=alpha)


@pytest.mark.parametrize("alpha", [math.nan, math.inf])
def test_alpha_must_be_finite(alpha):
    with pytest.raises(ConfigError, match=r"alpha: must be a finite number"):
        dirichlet_partition(LABELS, 3, alpha, seed=0)
    with pytest.raises(ConfigError, match=r"alpha: must be a finite number"):
        PartitionConfig(alpha=alpha)


def test_num_clients_must_be_at_least_one():
    with pytest.raises(ConfigError, match=r"num_clients: must be >= 1, got 0"):
        iid_partition(10, 0, seed=0)
    with pytest.raises(ConfigError, match=r"num_clients: must be >= 1"):
        dirichlet_partition(LABELS, 0, 1.0, seed=0)
    with pytest.raises(ConfigError, match=r"num_clients: must be >= 1"):
        shard_partition(LABELS, 0, 1, seed=0)


def test_too_few_samples():
    with pytest.raises(DataError,
                       match=r"num_clients: 30 clients need at least 30 samples, got 12"):
        iid_partition(12, 30, seed=0)
    with pytest.raises(DataError, match=r"num_clients: .* got 30"):
        dirichlet_partition(LABELS, 31, 1.0, seed=0)
    with pytest.raises(DataError, match=r"num_clients: .* got 30"):
        PartitionConfig(kind="shards").split(LABELS, 31, seed=0)


def test_labels_must_be_one_dimensional():
    with pytest.raises(DataError, match=r"labels: .*1-D.*shape \(10, 3\)"):
        dirichlet_partition(LABELS.reshape(10, 3), 2, 1.0, seed=0)
    with pytest.raises(DataError, match=r"labels: .*1-D"):
        PartitionConfig().split(LABELS.reshape(10, 3), 2, seed=0)


@pytest.mark.parametrize("labels", [LABELS.astype(np.float64), LABELS.astype(bool)])
def test_labels_must_be_integers(labels):
    with pytest.raises(DataError, match=r"labels: .*integer.*dtype"):
        dirichlet_partition(labels, 2, 1.0, seed=0)
    with pytest.raises(DataError, match=r"labels: .*integer.*dtype"):
        shard_partition(labels, 2, 1, seed=0)


def test_labels_must_be_non_empty():
    with pytest.raises(DataError, match=r"labels: must be non-empty"):
        dirichlet_partition(np.array([], dtype=np.int64), 1, 1.0, seed=0)


def test_too_many_shards():
    with pytest.raises(DataError, match=r"shards_per_client: 10 clients x 4 shards need at least "
                                        r"40 samples, got 30"):
        shard_partition(LABELS, 10, 4, seed=0)


def test_shards_per_client_must_be_at_least_one():
    with pytest.raises(ConfigError, match=r"shards_per_client: must be >= 1, got 0"):
        shard_partition(LABELS, 2, 0, seed=0)
    with pytest.raises(ConfigError, match=r"shards_per_client: must be >= 1, got 0"):
        PartitionConfig(kind="shards", shards_per_client=0)


def test_seed_is_validated():
    with pytest.raises(ConfigError, match=r"seed: must be >= 0"):
        iid_partition(10, 2, seed=-1)
    with pytest.raises(ConfigError, match=r"seed: must be an integer"):
        iid_partition(10, 2, seed=1.5)


def test_unknown_kind():
    with pytest.raises(ConfigError, match=r"kind: must be one of 'iid', 'dirichlet', 'shards'"):
        PartitionConfig(kind="pathological")


def test_from_dict_rejects_unknown_key():
    with pytest.raises(ConfigError, match=r"partition: unknown field\(s\) beta"):
        PartitionConfig.from_dict({"kind": "dirichlet", "beta": 0.3})


def test_from_dict_validates_values():
    with pytest.raises(ConfigError, match=r"alpha: must be > 0"):
        PartitionConfig.from_dict({"kind": "dirichlet", "alpha": -1})


# --- PartitionConfig -------------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    PartitionConfig(),
    PartitionConfig(kind="dirichlet", alpha=0.1),
    PartitionConfig(kind="dirichlet", alpha=3),
    PartitionConfig(kind="shards", shards_per_client=5),
])
def test_config_round_trip(config):
    as_dict = config.to_dict()
    assert as_dict == {"kind": config.kind, "alpha": config.alpha,
                       "shards_per_client": config.shards_per_client}
    assert PartitionConfig.from_dict(as_dict) == config
    assert PartitionConfig.from_dict(json.loads(json.dumps(as_dict))) == config


def test_config_split_dispatches():
    labels = balanced_labels(4, 25)
    assert_same(PartitionConfig().split(labels, 5, seed=7), iid_partition(100, 5, seed=7))
    assert_same(PartitionConfig(kind="dirichlet", alpha=0.2).split(labels, 5, seed=7),
                dirichlet_partition(labels, 5, 0.2, seed=7))
    assert_same(PartitionConfig(kind="shards", shards_per_client=3).split(labels, 5, seed=7),
                shard_partition(labels, 5, 3, seed=7))


# --- scale -----------------------------------------------------------------------------------


def test_partitioners_scale_to_100k_samples_and_1000_clients():
    import time

    labels = np.random.default_rng(0).integers(0, 10, size=100_000)
    for split in (lambda: iid_partition(labels.size, 1000, seed=0),
                  lambda: dirichlet_partition(labels, 1000, 0.1, seed=0),
                  lambda: shard_partition(labels, 1000, 2, seed=0)):
        start = time.perf_counter()
        partition = split()
        elapsed = time.perf_counter() - start
        assert_valid_partition(partition, labels.size, 1000)
        assert elapsed < 2.0, elapsed


# --- backward compatibility: the new quantity-skew fields at their defaults change nothing ----

# sha256 (first 16 hex digits) of each part's size and indices, recorded with the partitioners as they
# were before quantity skew and min_size existed (labels and writers below, same seeds)
GOLDEN = {
    ("iid", 0, 7): "639240bb97da13bc", ("iid", 3, 20): "6e560d9d8544450b",
    ("dirichlet:0.5", 0, 7): "ff785d3cc41ace32", ("dirichlet:0.5", 3, 20): "3405f9cec9dbe04e",
    ("dirichlet:0.01", 0, 7): "d03420230b9ba70c", ("dirichlet:0.01", 3, 20): "8de0020cef6a6f52",
    ("shards", 0, 7): "5ca447c13aabff2e", ("shards", 3, 20): "aedf3fcdecc2ce42",
    ("natural", 0, 7): "f3f27171f1cbdf55", ("natural", 3, 20): "e40912e5eeacd8d0",
}


def _digest(partition) -> str:
    import hashlib

    digest = hashlib.sha256()
    for part in partition:
        digest.update(np.int64(part.size).tobytes())
        digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize(("spec", "seed", "clients"), list(GOLDEN))
@pytest.mark.parametrize("explicit", [False, True])
def test_existing_kinds_give_bit_identical_partitions(spec, seed, clients, explicit):
    rng = np.random.default_rng(12345)
    labels = rng.integers(0, 10, size=1000).astype(np.int64)
    writers = rng.integers(0, 40, size=1000).astype(np.int64)
    kind, _, alpha = spec.partition(":")
    fields = {"alpha": float(alpha)} if alpha else {}
    if explicit:  # the new fields spelled out at their defaults (quantity_alpha is unused by "equal")
        fields |= {"quantity": "equal", "quantity_alpha": 2.5, "min_size": 1}
    config = PartitionConfig(kind, **fields)
    assert _digest(config.split(labels, clients, seed=seed, writers=writers)) == GOLDEN[spec, seed, clients]
    assert PartitionConfig.from_dict(json.loads(json.dumps(PartitionConfig(kind).to_dict()))) == \
        PartitionConfig(kind)
