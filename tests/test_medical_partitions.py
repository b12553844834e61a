"""Medical non-IID federations: quantity skew (:mod:`secagg.data.partition`) and feature shift
(:mod:`secagg.data.shift`), their composition with the label splits, the task/CLI/bench plumbing and
the heterogeneity report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.data.federated import FederatedDataset
from secagg.data.partition import (
    PartitionConfig,
    client_sizes,
    heterogeneity,
    label_skew,
    quantity_partition,
    size_skew,
)
from secagg.data.shift import (
    FeatureShift,
    SiteAcquisition,
    adjust_intensity,
    gaussian_blur,
    rotate,
)
from secagg.errors import ConfigError, DataError

torch.set_num_threads(1)

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
LABEL_KINDS = ("iid", "dirichlet", "shards")
LAWS = ("power-law", "dirichlet")


def assert_exact_cover(parts, n: int) -> None:
    for part in parts:
        assert part.dtype == np.int64 and part.ndim == 1
        assert np.all(np.diff(part) > 0), "not sorted ascending"
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def balanced(num_classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(num_classes, dtype=np.int64), per_class)


# --- quantity skew ---------------------------------------------------------------------------

@st.composite
def quantity_cases(draw):
    num_classes = draw(st.integers(1, 8))
    n = draw(st.integers(1, 400))
    labels = np.array(draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)),
                      dtype=np.int64)
    num_clients = draw(st.integers(1, min(n, 30)))
    min_size = draw(st.integers(1, max(1, n // num_clients)))
    config = PartitionConfig(kind=draw(st.sampled_from(LABEL_KINDS)),
                             alpha=draw(st.floats(0.01, 10.0)),
                             shards_per_client=draw(st.integers(1, 4)),
                             quantity=draw(st.sampled_from(LAWS)),
                             quantity_alpha=draw(st.floats(0.05, 3.0)), min_size=min_size)
    return labels, num_clients, config


@settings(max_examples=80, deadline=None)
@given(case=quantity_cases(), seed=SEEDS)
def test_quantity_skew_assigns_every_index_once_with_the_drawn_sizes(case, seed):
    labels, num_clients, config = case
    parts = config.split(labels, num_clients, seed=seed)
    assert len(parts) == num_clients
    assert_exact_cover(parts, labels.size)
    sizes = np.array([p.size for p in parts])
    assert sizes.sum() == labels.size
    assert sizes.min() >= config.min_size
    expected = client_sizes(labels.size, num_clients, config.quantity, config.quantity_alpha,
                            min_size=config.min_size, seed=seed)
    np.testing.assert_array_equal(sizes, expected)  # the label split fills the sizes exactly
    again = config.split(labels, num_clients, seed=seed)
    for a, b in zip(parts, again, strict=True):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5000), num_clients=st.integers(1, 50), alpha=st.floats(0.05, 4.0),
       law=st.sampled_from(LAWS), seed=SEEDS)
def test_client_sizes_sum_to_n_and_respect_min_size(n, num_clients, alpha, law, seed):
    num_clients = min(num_clients, n)
    min_size = max(1, n // (3 * num_clients))
    sizes = client_sizes(n, num_clients, law, alpha, min_size=min_size, seed=seed)
    assert sizes.dtype == np.int64 and sizes.shape == (num_clients,)
    assert sizes.sum() == n and sizes.min() >= min_size


def test_power_law_sizes_known_answer():
    # weights 1, 1/2, 1/3, 1/4 (sum 25/12); 4 go to min_size, the other 25 split 12, 6, 4, 3
    sizes = client_sizes(29, 4, "power-law", 1.0, seed=5)
    assert sorted(sizes.tolist(), reverse=True) == [13, 7, 5, 4]
    # the ranks are dealt by the seed: which client is the large hospital changes with it
    owners = {int(np.argmax(client_sizes(29, 4, "power-law", 1.0, seed=s))) for s in range(12)}
    assert len(owners) > 1


def test_power_law_is_skewed_and_grows_with_the_exponent():
    n, num_clients = 20000, 20
    ginis = []
    for a in (0.5, 1.0, 1.5, 2.0):
        sizes = np.sort(client_sizes(n, num_clients, "power-law", a, seed=1))
        largest_over_median = sizes[-1] / np.median(sizes)
        # rank law: the largest holds ~ (N/2 + 1/2)^a times the median's share
        assert largest_over_median == pytest.approx(10.5 ** a, rel=0.1)
        ginis.append(size_skew([np.arange(s) for s in sizes])["gini"])
    assert ginis == sorted(ginis) and ginis[0] > 0.2
    skew = size_skew(PartitionConfig(quantity="power-law", quantity_alpha=1.5)
                     .split(balanced(10, 2000), num_clients, seed=0))
    assert skew["top20_share"] > 0.6 and skew["max_over_min"] > 50


def test_dirichlet_quantity_concentrates_as_beta_shrinks():
    tops = [size_skew([np.arange(s) for s in client_sizes(10000, 20, "dirichlet", b, seed=3)])["top20_share"]
            for b in (100.0, 1.0, 0.1)]
    assert tops[0] < 0.3 < tops[2] and tops == sorted(tops)


def test_iid_labels_with_quantity_skew_keep_the_global_label_mix():
    labels = balanced(10, 2000)
    parts = PartitionConfig("iid", quantity="power-law", quantity_alpha=1.0).split(labels, 10, seed=7)
    big = max(parts, key=len)
    mix = np.bincount(labels[big], minlength=10) / big.size
    np.testing.assert_allclose(mix, 0.1, atol=0.02)
    assert label_skew(parts, labels) < 0.1
    skewed = PartitionConfig("dirichlet", alpha=0.1, quantity="power-law").split(labels, 10, seed=7)
    assert label_skew(skewed, labels) > 0.5


def test_dirichlet_label_skew_with_quantity_skew_grows_as_alpha_shrinks():
    labels = balanced(10, 500)
    skews = [label_skew(PartitionConfig("dirichlet", alpha=a, quantity="power-law")
                        .split(labels, 20, seed=2), labels) for a in (100.0, 1.0, 0.05)]
    assert skews[0] < 0.2 < skews[2] and skews == sorted(skews)


def test_shards_with_quantity_skew_give_few_labels_per_client():
    labels = balanced(10, 300)
    parts = PartitionConfig("shards", shards_per_client=2, quantity="power-law").split(labels, 10, seed=0)
    for p in parts:  # 2 contiguous shards of the label-sorted order: each spans <= ceil(size / 300) + 1
        assert np.unique(labels[p]).size <= 2 * (math.ceil(math.ceil(p.size / 2) / 300) + 1)
    assert sum(np.unique(labels[p]).size <= 4 for p in parts) >= 8  # the small sites: few labels


def test_min_size_for_the_equal_size_kinds():
    labels = balanced(5, 40)
    parts = PartitionConfig("dirichlet", alpha=0.01, min_size=15).split(labels, 10, seed=0)
    assert_exact_cover(parts, labels.size)
    assert min(p.size for p in parts) >= 15
    with pytest.raises(DataError, match=r"partition\.min_size: shards gives client"):
        PartitionConfig("shards", shards_per_client=3, min_size=5).split(np.arange(10) % 2, 2, seed=0)


@pytest.mark.parametrize("kind", ["iid", "dirichlet"])
@pytest.mark.parametrize("quantity", ["equal", "power-law"])
def test_impossible_min_size_names_the_field(kind, quantity):
    with pytest.raises(DataError, match=r"partition\.min_size: 10 clients of at least 11 examples need "
                                        r"at least 110 samples, got 100"):
        PartitionConfig(kind, quantity=quantity, min_size=11).split(balanced(4, 25), 10, seed=0)


def test_quantity_partition_rejects_sizes_that_do_not_fit():
    with pytest.raises(DataError, match="sizes: must be >= 1 per client and sum to the 10 samples"):
        quantity_partition(np.zeros(10, dtype=np.int64), np.array([5, 4]), seed=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"quantity": "zipf"}, r"partition\.quantity: must be one of 'equal', 'power-law', 'dirichlet'"),
    ({"quantity_alpha": 0.0}, r"partition\.quantity_alpha: must be > 0, got 0.0"),
    ({"quantity_alpha": float("nan")}, r"partition\.quantity_alpha: must be a finite number"),
    ({"min_size": 0}, r"partition\.min_size: must be >= 1, got 0"),
    ({"kind": "natural", "quantity": "power-law"}, r"partition\.quantity: the natural partition keeps"),
])
def test_partition_config_validates_the_new_fields(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PartitionConfig(**kwargs)


def test_partition_config_round_trip_and_old_dicts():
    config = PartitionConfig("dirichlet", alpha=0.3, quantity="power-law", quantity_alpha=1.5, min_size=4)
    assert PartitionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # defaults stay out of to_dict: a configuration written before these fields reads and compares the same
    assert PartitionConfig().to_dict() == {"kind": "iid", "alpha": 0.5, "shards_per_client": 2}
    assert PartitionConfig.from_dict({"kind": "shards", "alpha": 0.5, "shards_per_client": 3}) == \
        PartitionConfig("shards", shards_per_client=3)


def test_size_skew_known_answers():
    equal = size_skew([np.arange(10)] * 5)
    assert equal["gini"] == 0 and equal["top20_share"] == pytest.approx(0.2)
    assert equal["max_over_min"] == 1 and equal["median"] == 10
    one_big = size_skew([np.arange(96)] + [np.arange(1)] * 4)
    assert one_big["top20_share"] == pytest.approx(0.96) and one_big["max_over_min"] == 96
    # Gini of (1, 1, 1, 1, 96): sum |xi - xj| / (2 n^2 mean) = 2 * 4 * 95 / (2 * 25 * 20)
    assert one_big["gini"] == pytest.approx(0.76)
    report = heterogeneity((np.array([0, 1]), np.array([2, 3])), np.array([0, 0, 1, 1]))
    assert report["label_skew"] == pytest.approx(0.5) and report["sizes"]["gini"] == 0


# --- feature shift: the transforms -----------------------------------------------------------

def test_rotation_by_90_degrees_is_rot90_counter_clockwise():
    x = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rotate(x, 90.0), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate(x, -90.0), torch.rot90(x, -1, dims=(-2, -1)), atol=1e-5, rtol=0)
    wide = torch.rand(2, 1, 6, 10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(rotate(wide, 180.0), torch.rot90(wide, 2, dims=(-2, -1)), atol=1e-5, rtol=0)


@settings(max_examples=20, deadline=None)
@given(angle=st.floats(-180, 180))
def test_rotation_leaves_a_centred_radially_symmetric_image_unchanged(angle):
    c = torch.arange(32) + 0.5 - 16
    blob = torch.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / 32.0).expand(1, 1, 32, 32)
    assert (rotate(blob, angle) - blob).abs().max() < 0.02  # bilinear interpolation error only


def test_intensity_and_contrast_known_answers():
    x = torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]])
    expected = torch.tensor([[[[0.1, 0.7], [1.3, 0.4]]]])
    torch.testing.assert_close(SiteAcquisition(offset=0.1, gain=1.2)(x), expected)
    torch.testing.assert_close(adjust_intensity(x, 0.5, -0.2), x * 0.5 - 0.2)
    tabular = torch.tensor([[1.0, -2.0, 3.0]])
    # tabular rows: the same gain and offset on every feature; rotation and blur are for images
    torch.testing.assert_close(SiteAcquisition(offset=-1.0, gain=2.0, sigma=1.0, angle=10.0)(tabular),
                               torch.tensor([[1.0, -5.0, 5.0]]))


@pytest.mark.parametrize("sigma", [0.3, 1.0, 10.0])
def test_blur_preserves_a_constant_image_and_its_mean(sigma):
    flat = torch.full((2, 3, 7, 9), 0.37)
    out = gaussian_blur(flat, sigma)
    torch.testing.assert_close(out, flat, atol=1e-6, rtol=0)
    assert out.mean().item() == pytest.approx(0.37, abs=1e-6)


def test_blur_matches_a_replicate_padded_gaussian_convolution():
    x = torch.rand(2, 3, 9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sigma, r = 1.3, 4
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    k = k / k.sum()
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (r, r, r, r), mode="replicate"),
                                     (k[:, None] * k[None, :]).expand(3, 1, -1, -1), groups=3)
    torch.testing.assert_close(gaussian_blur(x, sigma), ref)
    assert gaussian_blur(x, 2.0).std() < x.std()  # it smooths


def test_transforms_reject_what_is_not_images_or_rows():
    with pytest.raises(ConfigError, match=r"shift: feature shift applies to float images"):
        SiteAcquisition(gain=1.1)(torch.zeros(2, 8, 8))
    with pytest.raises(ConfigError, match=r"shift: feature shift applies to float images"):
        SiteAcquisition(gain=1.1)(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ConfigError, match=r"shift\.blur: needs float images"):
        gaussian_blur(torch.zeros(4, 4), 1.0)


# --- feature shift: sites, configuration -----------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(intensity=st.floats(0, 1), contrast=st.floats(0, 0.99), blur=st.floats(0, 10),
       rotation=st.floats(0, 180), seed=SEEDS)
def test_site_parameters_lie_within_the_strengths_and_follow_the_seed(intensity, contrast, blur,
                                                                        rotation, seed):
    shift = FeatureShift(intensity, contrast, blur, rotation)
    sites = shift.sites(6, seed)
    for s in sites:
        assert abs(s.offset) <= intensity and abs(s.gain - 1) <= contrast + 1e-12
        assert 0 <= s.sigma <= blur and abs(s.angle) <= rotation
    assert sites == shift.sites(6, seed)
    assert sites[:3] == shift.sites(3, seed)  # a site's acquisition does not depend on the client count


def test_sites_differ_between_clients_and_seeds():
    shift = FeatureShift()
    sites = shift.sites(8, seed=0)
    for name in ("offset", "gain", "sigma", "angle"):
        assert len({getattr(s, name) for s in sites}) == 8
    assert shift.sites(8, seed=1) != sites
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(sites[0](x), sites[1](x))


def synthetic(n: int = 120, num_clients: int = 6, *, config: PartitionConfig | None = None,
              seed: int = 0) -> FederatedDataset:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 1, 10, 10, generator=g), torch.arange(n) % 4
    config = config or PartitionConfig("dirichlet", alpha=0.5, quantity="power-law")
    parts = config.split(y.numpy(), num_clients, seed=seed)
    return FederatedDataset(x, y, torch.rand(30, 1, 10, 10, generator=g), torch.arange(30) % 4, parts, 4)


def test_zero_strength_is_the_identity_bit_for_bit():
    data = synthetic()
    zero = FeatureShift(intensity=0, contrast=0, blur=0, rotation=0, test="sites")
    assert all(s.is_identity for s in zero.sites(6, 3))
    out = zero.apply(data, seed=3)
    assert torch.equal(out.train_x, data.train_x) and torch.equal(out.test_x, data.test_x)


@pytest.mark.parametrize("config", [PartitionConfig("iid"), PartitionConfig("shards"),
                                    PartitionConfig("dirichlet", alpha=0.2, quantity="power-law"),
                                    PartitionConfig("iid", quantity="dirichlet", quantity_alpha=0.5)])
def test_shift_composes_with_every_partition(config):
    data = synthetic(config=config)
    shift = FeatureShift(rotation=30.0)
    out = shift.apply(data, seed=9)
    assert out.partition is data.partition and torch.equal(out.train_y, data.train_y)
    for i, site in enumerate(shift.sites(data.num_clients, 9)):
        torch.testing.assert_close(out.client(i).x, site(data.client(i).x))
    assert torch.equal(out.test_x, data.test_x)  # test="clean": the global test set as loaded
    assert torch.equal(synthetic(config=config).train_x, data.train_x)  # the input is not changed


def test_test_sites_shows_each_test_example_through_its_site():
    data = synthetic()
    shift = FeatureShift(test="sites")
    out = shift.apply(data, seed=4)
    owner = shift.test_sites(30, data.num_clients, 4)
    sites = shift.sites(data.num_clients, 4)
    for j in range(30):
        torch.testing.assert_close(out.test_x[j:j + 1], sites[owner[j]](data.test_x[j:j + 1]))
    torch.testing.assert_close(shift.site_test(data.test_x, 2, 4), sites[2](data.test_x))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"intensity": 1.5}, r"shift\.intensity: must be <= 1.0, got 1.5"),
    ({"intensity": -0.1}, r"shift\.intensity: must be >= 0.0, got -0.1"),
    ({"contrast": 1.0}, r"shift\.contrast: must be < 1.0, got 1.0"),
    ({"blur": 10.5}, r"shift\.blur: must be <= 10.0, got 10.5"),
    ({"rotation": 181}, r"shift\.rotation: must be <= 180.0, got 181"),
    ({"rotation": float("inf")}, r"shift\.rotation: must be a finite number"),
    ({"test": "local"}, r"shift\.test: must be one of 'clean', 'sites'"),
])
def test_feature_shift_validates_each_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FeatureShift(**kwargs)


def test_feature_shift_round_trip():
    shift = FeatureShift(intensity=0.1, contrast=0.2, blur=0.5, rotation=5.0, test="sites")
    assert FeatureShift.from_dict(json.loads(json.dumps(shift.to_dict()))) == shift
    with pytest.raises(ConfigError, match="shift: unknown field"):
        FeatureShift.from_dict({"gamma": 1.0})
    summary = shift.summary(3, seed=0)
    assert summary["rotation"] == 5.0 and len(summary["sites"]) == 3
    assert summary["sites"][1] == shift.site(1, 0).to_dict()


# --- the task, a deployment's client, the CLI and the bench ----------------------------------

def test_task_config_carries_the_shift_and_old_configs_load_unchanged():
    from secagg.experiment import ExperimentConfig
    from secagg.task import TaskConfig

    assert "shift" not in TaskConfig().to_dict()
    old = TaskConfig().to_dict()
    assert TaskConfig.from_dict(old) == TaskConfig()
    config = ExperimentConfig(task=TaskConfig(
        partition=PartitionConfig("dirichlet", quantity="power-law", quantity_alpha=1.2, min_size=3),
        shift=FeatureShift(rotation=5.0, test="sites")))
    assert ExperimentConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="shift: expected a FeatureShift or None"):
        TaskConfig(shift={"rotation": 5.0})


def test_a_deployments_client_builds_the_servers_shifted_data():
    from secagg.experiment import ExperimentConfig
    from secagg.task import TaskConfig, build_task, heterogeneity_report, local_data_factory

    task = TaskConfig(num_clients=4, partition=PartitionConfig("iid", quantity="power-law"),
                      shift=FeatureShift(test="sites"))
    server = build_task(task, seed=11)
    plain = build_task(TaskConfig(num_clients=4, partition=task.partition), seed=11)
    for a, b in zip(server.data.partition, plain.data.partition, strict=True):
        np.testing.assert_array_equal(a, b)  # the shift changes inputs only, never who holds what
    assert not torch.equal(server.data.train_x, plain.data.train_x)
    assert not torch.equal(server.data.test_x, plain.data.test_x)
    received = ExperimentConfig.from_json(ExperimentConfig(task=task, seed=11).to_json())
    client = local_data_factory(None)(received.task, received.seed)
    assert torch.equal(client.data.train_x, server.data.train_x)
    assert torch.equal(client.data.test_x, server.data.test_x)
    report = heterogeneity_report(server.data, task, 11)
    assert report["sizes"]["clients"] == 4 and report["sizes"]["max_over_min"] > 1
    assert 0 <= report["label_skew"] < 0.3 and len(report["shift"]["sites"]) == 4
    json.dumps(report)


def test_cli_flags_set_quantity_skew_and_feature_shift():
    from secagg.cli import FlagError, _build_parser, config_from_args

    parser = _build_parser()
    config = config_from_args(parser.parse_args([
        "train", "--partition", "dirichlet", "--quantity", "power-law", "--quantity-alpha", "1.5",
        "--min-size", "3", "--feature-shift", "--shift-rotation", "30", "--shift-test", "sites"]))
    assert config.task.partition == PartitionConfig("dirichlet", quantity="power-law", quantity_alpha=1.5,
                                                    min_size=3)
    assert config.task.shift == FeatureShift(rotation=30.0, test="sites")
    assert config_from_args(parser.parse_args(["train", "--shift-blur", "0"])).task.shift == \
        FeatureShift(blur=0.0)  # any --shift-* flag turns it on
    assert config_from_args(parser.parse_args(["train"])).task.shift is None
    with pytest.raises(FlagError, match=r"--shift-contrast: must be < 1.0, got 1.0"):
        config_from_args(parser.parse_args(["train", "--shift-contrast", "1"]))


def test_bench_partition_spelling():
    from attacks.bench.config import partition_spec

    assert partition_spec("dirichlet:0.5+power:1.5") == (
        PartitionConfig("dirichlet", alpha=0.5, quantity="power-law", quantity_alpha=1.5), None)
    assert partition_spec("iid+quantity-dirichlet:0.3+shift") == (
        PartitionConfig("iid", quantity="dirichlet", quantity_alpha=0.3), FeatureShift())
    assert partition_spec("shards:2") == (PartitionConfig("shards", shards_per_client=2), None)
    for bad in ("iid+shift+power:1", "iid+power:x", "dirichlet"):
        with pytest.raises(ConfigError, match=r"run.partitions: .* is not one of 'iid', 'dirichlet:<alpha>'"):
            partition_spec(bad)
    with pytest.raises(ConfigError, match=r"run.partitions: 'iid\+power:0': partition.quantity_alpha"):
        partition_spec("iid+power:0")
    assert math.isclose(partition_spec("iid+power:2")[0].quantity_alpha, 2.0)
