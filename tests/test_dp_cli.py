"""``secagg train --dp ...``: flags, their composition with --secure, and an end-to-end DP run."""

from __future__ import annotations

import json

import pytest

from dp.accounting import GaussianAccountant, local_gaussian_epsilon
from dp.adaptive import AdaptiveClipDP
from dp.central import DPFedAvg
from dp.distributed import DistributedDP
from dp.dpsgd import DPSGDTrainer
from dp.local import LocalDP
from secagg.aggregation import Mean, SecureSum
from secagg.cli import FlagError, _build_parser, config_from_args, main

BASE = ["train", "--clients", "10", "--rounds", "3"]


def _config(*flags: str):
    return config_from_args(_build_parser().parse_args([*BASE, *flags]))


def test_central_dp_run_writes_epsilon_per_round(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--rounds", "2", "--clients", "6", "--local-epochs", "1", "--dp", "central",
                 "--noise-multiplier", "1.0", "--clip", "2.0", "--sample-rate", "0.5",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "epsilon" in printed
    doc = json.loads((out / "results.json").read_text())
    fed = doc["config"]["fedavg"]
    assert fed["sampling"] == "poisson" and fed["fraction"] == 0.5
    assert fed["aggregator"]["kind"] == "dp-fedavg" and fed["aggregator"]["expected_clients"] == 3.0
    ref = GaussianAccountant(1.0, 0.5, "rdp", "poisson")
    eps = [row["epsilon"] for row in doc["rounds"]]
    assert eps == pytest.approx([ref.epsilon(r, 1e-5) for r in (1, 2)])
    assert eps[0] < eps[1]
    assert "stopped" not in doc


def test_target_epsilon_stops_the_run_and_says_why(tmp_path, capsys):
    ref = GaussianAccountant(1.0, 1.0, "rdp", "none")
    budget = 0.5 * (ref.epsilon(1, 1e-5) + ref.epsilon(2, 1e-5))
    out = tmp_path / "run"
    assert main(["train", "--rounds", "4", "--clients", "4", "--local-epochs", "1", "--dp", "central",
                 "--noise-multiplier", "1.0", "--target-epsilon", str(budget),
                 "--out", str(out), "--no-progress"]) == 0
    assert "stopped early" in capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["rounds"]) == 1 and doc["rounds"][0]["epsilon"] <= budget
    assert doc["stopped"].startswith("privacy budget: epsilon would reach")


def test_target_epsilon_alone_solves_the_noise_multiplier():
    agg = _config("--dp", "central", "--sample-rate", "0.3", "--target-epsilon", "2.0").fedavg.aggregator
    assert isinstance(agg, DPFedAvg) and agg.sampling == "poisson" and agg.expected_clients == 3.0
    assert agg.epsilon_after(3) <= 2.0 < DPFedAvg(noise_multiplier=0.98 * agg.noise_multiplier,
                                                  sample_rate=0.3).epsilon_after(3)
    local = _config("--dp", "local", "--target-epsilon", "4.0").fedavg.aggregator
    assert isinstance(local, LocalDP)
    assert local_gaussian_epsilon(local.noise_multiplier, 3, 1e-5) <= 4.0


def test_composition_with_secure_aggregation():
    full = _config("--dp", "central", "--noise-multiplier", "1", "--secure")
    central = full.fedavg
    assert central.sampling == "fixed" and central.aggregator.sampling == "none"  # no amplification
    assert central.aggregator.inner == SecureSum(weighted=False, max_clients=full.task.num_clients)
    assert central.aggregator.expected_clients == 10.0
    plain = _config("--dp", "central", "--noise-multiplier", "1").fedavg.aggregator
    assert plain.inner == Mean(weighted=False)
    local = _config("--dp", "local", "--noise-multiplier", "0.5", "--clip", "2", "--secure").fedavg.aggregator
    assert isinstance(local.inner, SecureSum) and local.inner.value_range == pytest.approx(2 * (1 + 6 * 0.5))
    adaptive = _config("--dp", "adaptive", "--noise-multiplier", "0.5", "--fraction", "1.0",
                       "--clients", "20").fedavg.aggregator
    assert isinstance(adaptive, AdaptiveClipDP) and adaptive.expected_clients == 20.0
    dist = _config("--dp", "distributed", "--dp-mechanism", "skellam", "--noise-multiplier", "1",
                   "--fraction", "0.5").fedavg.aggregator
    assert isinstance(dist, DistributedDP) and dist.mechanism == "skellam" and dist.expected_clients == 5
    sgd = _config("--dp", "dpsgd", "--noise-multiplier", "1.1", "--clip", "0.5", "--batch-size", "5",
                  "--secure").fedavg
    assert isinstance(sgd.trainer, DPSGDTrainer) and sgd.trainer.max_grad_norm == 0.5
    assert (sgd.trainer.batch_size, sgd.trainer.epochs) == (5, sgd.client.epochs)
    assert isinstance(sgd.aggregator, SecureSum)


@pytest.mark.parametrize(("flags", "message"), [
    (["--noise-multiplier", "1"], "--noise-multiplier: needs --dp"),
    (["--target-epsilon", "1"], "--target-epsilon: needs --dp"),
    (["--dp", "central"], "--noise-multiplier: --dp central needs --noise-multiplier or --target-epsilon"),
    (["--dp", "central", "--noise-multiplier", "0"], "noise_multiplier: must be > 0"),
    (["--dp", "central", "--noise-multiplier", "1", "--clip", "-1"], "clip: must be > 0"),
    (["--dp", "central", "--noise-multiplier", "1", "--delta", "1"], "delta: must be < 1"),
    (["--dp", "central", "--noise-multiplier", "1", "--dp-mechanism", "ddg"], "needs --dp distributed"),
    (["--dp", "central", "--noise-multiplier", "1", "--aggregator", "median"], "--aggregator: cannot"),
    (["--dp", "central", "--noise-multiplier", "1", "--clip-norm", "1"], "--clip-norm: cannot"),
    (["--sample-rate", "0.5", "--fraction", "0.5"], "--sample-rate: replaces --fraction"),
    (["--sample-rate", "0"], "--sample-rate: must be in"),
    (["--dp", "local", "--noise-multiplier", "1", "--accountant", "prv"], "RDP only"),
    (["--dp", "distributed", "--noise-multiplier", "1", "--sample-rate", "0.5"], "fixed round size"),
    (["--dp", "dpsgd", "--target-epsilon", "2"], "needs --noise-multiplier"),
])
def test_bad_flag_combinations_are_refused(flags, message):
    with pytest.raises(FlagError, match=message):
        _config(*flags)


def test_flag_errors_exit_2_with_usage(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*BASE, "--dp", "central", "--out", str(tmp_path), "--no-progress"])
    assert exc.value.code == 2
    assert "--noise-multiplier" in capsys.readouterr().err
