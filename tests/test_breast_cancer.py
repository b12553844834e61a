"""The bundled breast-cancer task: the table, its training-only standardization, the site split, the
tabular models, and short real runs through FedAvg, secure aggregation, DP-FedAvg, a robust rule under
attack, the command line and the benchmark's refusals."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from secagg.aggregation import CoordinateMedian, Mean, SecureSum
from secagg.data.breast_cancer import (
    FEATURES,
    SITE_FEATURE,
    feature_names,
    load_breast_cancer_split,
    site_partition,
    standardize,
)
from secagg.data.datasets import load_dataset, subsample
from secagg.data.partition import PartitionConfig, iid_partition, label_skew
from secagg.errors import ConfigError, DataError
from secagg.experiment import ExperimentConfig, run_experiment
from secagg.fedavg import ClientConfig, FedAvgConfig
from secagg.models import build_model
from secagg.seeding import numpy_rng
from secagg.task import TaskConfig, build_task, load_task_factory, local_data_factory, task_dataset

torch.set_num_threads(1)


def _run(aggregator=None, *, partition="natural", rounds=10, clients=10, adversary=None, seed=0):
    """A short FedAvg run on breast-cancer with the tabular model (1 local epoch, batch 16, lr 0.1)."""
    config = ExperimentConfig(
        task=TaskConfig(dataset="breast-cancer", model="tabular", num_clients=clients,
                        partition=PartitionConfig(partition)),
        fedavg=FedAvgConfig(rounds=rounds, client=ClientConfig(epochs=1, batch_size=16, lr=0.1),
                            aggregator=aggregator or Mean(), adversary=adversary),
        seed=seed)
    return run_experiment(config)


# --- the table ------------------------------------------------------------------------------------

def test_the_table_is_569_tumours_of_30_features_split_stratified_and_seeded():
    train_x, train_y, test_x, test_y, radius = load_breast_cancer_split(0.2, seed=3)
    assert train_x.shape == (455, FEATURES) and test_x.shape == (114, FEATURES)
    assert train_x.dtype == test_x.dtype == torch.float32 and train_y.dtype == torch.int64
    y = torch.cat([train_y, test_y])
    assert torch.bincount(y).tolist() == [212, 357]  # 0 = malignant, 1 = benign
    # stratified: each split keeps the 212/569 malignant share to within one example
    for part in (train_y, test_y):
        assert abs(int((part == 0).sum()) - 212 / 569 * len(part)) <= 1
    assert radius.shape == (455,) and feature_names()[0] == SITE_FEATURE
    assert 6.0 < radius.min() < radius.max() < 30.0  # millimetres
    again = load_breast_cancer_split(0.2, seed=3)
    assert torch.equal(again[0], train_x) and torch.equal(again[3], test_y)
    assert not torch.equal(load_breast_cancer_split(0.2, seed=4)[0], train_x)
    with pytest.raises(ConfigError, match=r"test_fraction: must be < 1\.0"):
        load_breast_cancer_split(1.0)


def test_features_are_standardized_with_the_training_split_statistics_only():
    train_x, _, test_x, _, radius = load_breast_cancer_split(0.25, seed=1)
    mean, std = train_x.double().mean(0), train_x.double().std(0, unbiased=False)
    assert mean.abs().max() < 1e-5 and (std - 1).abs().max() < 1e-5
    # the test split is scaled by the training numbers: its own mean is not 0, its std not 1
    assert test_x.double().mean(0).abs().max() > 0.05
    assert (test_x.double().std(0, unbiased=False) - 1).abs().max() > 0.05
    # exactly (raw - train mean) / train std, recomputed from scikit-learn's table
    bunch = load_breast_cancer()
    raw_tr, raw_te = train_test_split(bunch.data, test_size=0.25, random_state=1, stratify=bunch.target)
    expected = (raw_te - raw_tr.mean(0)) / raw_tr.std(0)
    np.testing.assert_allclose(test_x.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(radius, raw_tr[:, 0])


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31), n_test=st.integers(1, 20), shift=st.floats(-1e3, 1e3))
def test_the_test_split_never_enters_the_scaling(seed, n_test, shift):
    g = numpy_rng(seed, "test-standardize")
    train = g.normal(3.0, 2.0, size=(40, 5))
    a, b = g.normal(size=(n_test, 5)), g.normal(size=(n_test, 5)) + shift
    train_a, test_a = standardize(train, a)
    train_b, test_b = standardize(train, b)
    np.testing.assert_array_equal(train_a, train_b)  # whatever the test rows are
    scale = train.std(0)
    np.testing.assert_allclose(test_b - test_a, ((b - a) / scale).astype(np.float32), rtol=1e-4, atol=1e-3)


def test_load_dataset_names_breast_cancer_and_it_reads_no_files():
    split = load_dataset("breast-cancer", test_fraction=0.2, seed=0)
    assert split.num_classes == 2 and split.train_x.shape[1:] == (30,)
    assert split.train_site_key is not None and split.train_site_key.shape == (455,)
    small = subsample(split, train_size=100, seed=0)
    assert small.train_site_key is not None and small.train_site_key.shape == (100,)
    assert set(small.train_site_key) <= set(split.train_site_key)
    with pytest.raises(ConfigError, match="data: breast-cancer ships with scikit-learn and reads no files"):
        load_dataset("breast-cancer", "/some/folder")
    with pytest.raises(ConfigError, match="data: breast-cancer ships with scikit-learn"):
        TaskConfig(dataset="breast-cancer", data="/some/folder")


# --- the site split -------------------------------------------------------------------------------

@settings(max_examples=40)
@given(n=st.integers(1, 300), k=st.integers(1, 12), seed=st.integers(0, 2**31),
       noise=st.sampled_from([0.0, 0.1, 0.5, 2.0]))
def test_site_partition_uses_every_example_once_in_near_equal_sites(n, k, seed, noise):
    key = numpy_rng(seed, "test-sites").gamma(4.0, 3.0, size=n)
    if n < k:
        with pytest.raises(DataError, match=f"num_clients: {k} sites need at least {k} examples"):
            site_partition(key, k, seed=seed, noise=noise)
        return
    parts = site_partition(key, k, seed=seed, noise=noise)
    assert len(parts) == k and all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(np.array_equal(a, b) for a, b in zip(parts, site_partition(key, k, seed=seed, noise=noise),
                                                     strict=True))
    if noise == 0.0:  # sorted by the key alone: each site's tumours are no larger than the next site's
        for a, b in itertools.pairwise(parts):
            assert key[a].max() <= key[b].min()


def test_sites_differ_in_case_mix_on_the_real_table():
    split = load_dataset("breast-cancer", seed=0)
    y, radius = split.train_y.numpy(), split.train_site_key
    sites = site_partition(radius, 5, seed=0)
    medians = [float(np.median(radius[s])) for s in sites]
    malignant = [float((y[s] == 0).mean()) for s in sites]
    assert medians == sorted(medians)  # measured: 10.8, 11.9, 13.2, 14.7, 19.6 mm
    assert malignant[0] < 0.15 and malignant[-1] > 0.8  # measured: 0.03 ... 0.96
    skew, iid = label_skew(sites, y), label_skew(iid_partition(len(y), 5, seed=0), y)
    assert skew > 0.2 and iid < 0.1  # measured: 0.295 vs 0.035
    # the noise blurs the borders: neighbouring sites' size ranges overlap, unlike a plain sort
    assert radius[sites[0]].max() > radius[sites[1]].min()
    plain = site_partition(radius, 5, seed=0, noise=0.0)
    assert radius[plain[0]].max() <= radius[plain[1]].min()
    other = site_partition(radius, 5, seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(sites, other, strict=True))


def test_site_partition_refuses_bad_input_by_name():
    with pytest.raises(DataError, match="key: must be a non-empty finite 1-D array"):
        site_partition(np.array([1.0, np.nan]), 2, seed=0)
    with pytest.raises(DataError, match="key: must be a non-empty finite 1-D array"):
        site_partition(np.ones((3, 2)), 2, seed=0)
    with pytest.raises(ConfigError, match="num_clients: must be >= 1"):
        site_partition(np.ones(3), 0, seed=0)
    with pytest.raises(ConfigError, match=r"noise: must be >= 0\.0"):
        site_partition(np.ones(3), 2, seed=0, noise=-1.0)


def test_the_natural_partition_of_the_task_is_the_site_split():
    task = build_task(TaskConfig(dataset="breast-cancer", num_clients=6, partition=PartitionConfig("natural"),
                                 model="tabular"), seed=2)
    assert task.data.input_shape == (30,) and task.data.num_clients == 6 and task.data.num_classes == 2
    assert sum(task.data.client_sizes()) == len(task.data.train_y) == 455
    assert len(task.data.test_y) == 114  # every test example kept: the sites share one test set
    assert label_skew(task.data.partition, task.data.train_y.numpy()) > 0.2
    # a subset works too (whole sites are not writers), and other data sets still refuse "natural"
    small = TaskConfig(dataset="breast-cancer", num_clients=4, partition=PartitionConfig("natural"),
                       train_size=200)
    assert sum(build_task(small, seed=0).data.client_sizes()) == 200
    with pytest.raises(ConfigError, match="digits has no writers \\(femnist has\\) nor sites"):
        TaskConfig(dataset="digits", partition=PartitionConfig("natural"))


# --- models ---------------------------------------------------------------------------------------

def test_tabular_and_logistic_models_and_the_cnn_refuses_a_table():
    x = torch.zeros(7, 30)
    tabular, logistic = build_model("tabular", (30,), 2), build_model("logistic", (30,), 2)
    assert tabular(x).shape == logistic(x).shape == (7, 2)
    assert sum(p.numel() for p in tabular.parameters()) == 30 * 16 + 16 + 16 * 2 + 2
    assert sum(p.numel() for p in logistic.parameters()) == 30 * 2 + 2
    assert build_model("mlp", (30,), 2)(x).shape == (7, 2)  # mlp flattens any input too
    with pytest.raises(ConfigError, match="model: cnn needs \\(channels, height, width\\) input"):
        build_model("cnn", (30,), 2)


# --- real runs ------------------------------------------------------------------------------------

def test_plain_fedavg_on_the_site_split_comes_close_to_centralized_training():
    from sklearn.linear_model import LogisticRegression

    split = load_dataset("breast-cancer", seed=0)
    ceiling = LogisticRegression(max_iter=2000).fit(split.train_x.numpy(), split.train_y.numpy()).score(
        split.test_x.numpy(), split.test_y.numpy())
    assert ceiling > 0.95  # measured 0.96-0.99 over split seeds
    result = _run(partition="natural", rounds=10)
    accuracy = [row["accuracy"] for row in result.history]
    assert accuracy[-1] >= 0.9  # measured 0.965 (seeds 0-2: 0.91-0.96; centralized tabular 0.96-0.98)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_secure_aggregation_gives_the_plain_mean_model_within_quantization_error():
    plain = _run(Mean(), rounds=3)
    secure = _run(SecureSum(value_range=1.0), rounds=3)
    for name, w in plain.state.model.items():
        torch.testing.assert_close(secure.state.model[name], w, atol=1e-5, rtol=0)  # measured 3e-8
    assert all(row["agg/survivors"] == 10 for row in secure.history)
    for a, b in zip(plain.history, secure.history, strict=True):
        assert abs(a["accuracy"] - b["accuracy"]) <= 1 / 114 + 1e-12  # at most one test tumour


def test_dp_fedavg_runs_and_accounts_an_epsilon():
    from dp import DPFedAvg

    dp = DPFedAvg(clip=0.5, noise_multiplier=1.0, expected_clients=10.0, sample_rate=1.0, sampling="none",
                  simulation_seed=0)
    result = _run(dp, rounds=5)
    eps = [row["epsilon"] for row in result.history]
    assert all(e is not None and e > 0 for e in eps) and eps == sorted(eps)
    assert eps[-1] == pytest.approx(dp.epsilon_after(5))
    assert result.history[-1]["accuracy"] > 0.8  # measured 0.93 (seeds 0-2: 0.90-0.96); epsilon 12.3


def test_median_holds_against_sign_flip_where_the_mean_breaks():
    from attacks.byzantine import ByzantineClients
    from attacks.model_poisoning import SignFlip

    attack = ByzantineClients(0.2, update_attack=SignFlip(scale=4.0))
    mean = _run(Mean(), partition="iid", rounds=6, adversary=attack)
    median = _run(CoordinateMedian(), partition="iid", rounds=6, adversary=attack)
    assert median.history[-1]["accuracy"] >= 0.9  # measured 0.956 (seeds 0-2: 0.93-0.96)
    assert mean.history[-1]["accuracy"] < median.history[-1]["accuracy"] - 0.2  # measured 0.43 (-0.61)


# --- command line, deployments, benchmark ---------------------------------------------------------

def test_secagg_train_task_breast_cancer(tmp_path, capsys):
    from secagg.cli import main

    out = tmp_path / "run"
    assert main(["train", "--task", "breast-cancer", "--partition", "natural", "--clients", "5", "--rounds",
                 "3", "--local-epochs", "1", "--secure", "--out", str(out), "--no-progress"]) == 0
    assert "FedAvg on breast-cancer" in capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    task = doc["config"]["task"]
    assert (task["dataset"], task["model"], task["data"]) == ("breast-cancer", "tabular", None)
    assert doc["rounds"][-1]["accuracy"] > 0.85


def test_task_flag_defaults_and_conflicts():
    from secagg.cli import FlagError, _build_parser, config_from_args

    parse = _build_parser().parse_args
    task = config_from_args(parse(["train", "--task", "breast-cancer"])).task
    assert (task.dataset, task.model) == ("breast-cancer", "tabular")
    task = config_from_args(parse(["train", "--task", "breast-cancer", "--model", "logistic",
                                   "--dataset", "breast-cancer"])).task
    assert (task.dataset, task.model) == ("breast-cancer", "logistic")  # explicit flags win
    assert config_from_args(parse(["train", "--dataset", "breast-cancer"])).task.model == "mlp"
    with pytest.raises(FlagError, match="--dataset: --task breast-cancer trains on breast-cancer, got "
                                        "--dataset digits"):
        config_from_args(parse(["train", "--task", "breast-cancer", "--dataset", "digits"]))
    with pytest.raises(FlagError, match="--data: breast-cancer ships with scikit-learn"):
        config_from_args(parse(["train", "--task", "breast-cancer", "--data", "/x"]))
    assert load_task_factory("breast-cancer") is None
    with pytest.raises(ConfigError, match="--task: expected 'digits' or 'module:function' \\(or another "
                                          "built-in task: 'breast-cancer'"):
        load_task_factory("breast_cancer")


def test_a_deployment_client_builds_the_servers_breast_cancer_task():
    server = TaskConfig(dataset="breast-cancer", model="tabular", num_clients=4,
                        partition=PartitionConfig("natural"))
    build = local_data_factory(None, dataset=task_dataset("breast-cancer", None))
    task = build(server, 7)
    assert torch.equal(task.data.train_x, build_task(server, seed=7).data.train_x)
    with pytest.raises(ConfigError, match="--dataset: this client names breast-cancer, the server's run "
                                          "trains on digits"):
        build(TaskConfig(num_clients=4), 7)
    with pytest.raises(ConfigError, match="--data: the server's run trains on breast-cancer, which reads no "
                                          "files"):
        local_data_factory(None, data="/x")(server, 7)
    with pytest.raises(ConfigError, match="--dataset: --task breast-cancer trains on breast-cancer"):
        task_dataset("breast-cancer", "mnist")
    assert task_dataset("digits", None) is None and task_dataset("digits", "mnist") == "mnist"


def test_secagg_client_with_a_conflicting_dataset_exits_before_connecting(tmp_path, capsys):
    from secagg.cli import main
    from secagg.crypto.keys import SigningKey
    from secagg.transport.auth import save_identity

    save_identity(tmp_path / "id.pem", SigningKey.generate())
    assert main(["client", "--address", "127.0.0.1:1", "--id", "0", "--identity", str(tmp_path / "id.pem"),
                 "--insecure", "--task", "breast-cancer", "--dataset", "digits"]) == 2
    assert "--dataset: --task breast-cancer trains on breast-cancer" in capsys.readouterr().err


def test_the_bench_preset_and_its_refusals_on_a_table():
    from attacks.bench.config import PRESETS, load, parse, with_data
    from attacks.bench.runner import cells

    grid = load(preset="breast-cancer")
    assert "breast-cancer" in PRESETS and grid.dataset == "breast-cancer" and grid.model == "tabular"
    assert grid.partitions == ("iid", "natural") and len(cells(grid)) == 84
    backdoor = {"run": {"dataset": "breast-cancer", "model": "tabular"},
                "attacks": {"bd": {"data": {"kind": "backdoor"}}}, "defences": {"mean": {"kind": "mean"}}}
    with pytest.raises(ConfigError, match=r"attacks\.bd: the backdoor attack stamps a pixel trigger on"):
        parse(backdoor)
    digits_grid = parse({**backdoor, "run": {}})
    with pytest.raises(ConfigError, match=r"attacks\.bd: the backdoor attack stamps a pixel trigger"):
        with_data(digits_grid, dataset="breast-cancer")
    with pytest.raises(ConfigError, match="data: breast-cancer ships with scikit-learn"):
        with_data(grid, data="/x")


def test_the_pixel_backdoor_refuses_table_rows_by_name():
    from attacks.backdoors import DistributedBackdoor
    from attacks.data_poisoning import Backdoor

    with pytest.raises(ConfigError, match="backdoor: the pixel trigger needs images \\(n, c, h, w\\), got "
                                          "shape \\(3, 30\\)"):
        Backdoor().apply_trigger(torch.zeros(3, 30))
    with pytest.raises(ConfigError, match="dba: expected images"):
        DistributedBackdoor().apply_trigger(torch.zeros(3, 30))
