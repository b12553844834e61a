"""The ``secagg`` command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from secagg.aggregation import (
    Bucketing,
    Bulyan,
    CenteredClipping,
    ClipNorm,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    Mean,
    MultiKrum,
    NearestNeighbourMixing,
    SecureBucketing,
    SecureSum,
    TrimmedMean,
)
from secagg.cli import FlagError, _build_parser, config_from_args, main
from secagg.experiment import ExperimentConfig


def test_train_writes_results_table_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--rounds", "2", "--clients", "4", "--local-epochs", "1",
                 "--partition", "shards", "--clip-norm", "5", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test metrics per round" in printed and "final accuracy" in printed
    doc = json.loads((out / "results.json").read_text())
    cfg = doc["config"]
    assert cfg["task"]["num_clients"] == 4 and cfg["task"]["partition"]["kind"] == "shards"
    assert cfg["fedavg"]["aggregator"] == {"kind": "clip-norm", "max_norm": 5.0,
                                           "inner": {"kind": "mean", "weighted": True}}
    assert [r["round"] for r in doc["rounds"]] == [1, 2]
    assert (out / "results.csv").exists()
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_file_with_flag_override_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--rounds", "1", "--clients", "3", "--local-epochs", "1",
                 "--out", str(out), "--no-progress"]) == 0
    config = tmp_path / "config.json"
    config.write_text(json.dumps(json.loads((out / "results.json").read_text())["config"]))
    assert main(["train", "--config", str(config), "--rounds", "2", "--out", str(out),
                 "--resume", "--no-progress"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [1, 2]


def test_bad_values_exit_2_with_the_field_named(tmp_path, capsys):
    assert main(["train", "--clients", "0", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "num_clients: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["train", "--fraction", "1.5", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "fraction: must be <= 1.0, got 1.5" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "secagg", "--version"], capture_output=True,
                          text=True, check=True, timeout=60)
    assert done.stdout.startswith("secagg ")


def test_secure_training_reports_traffic_and_dropouts(tmp_path, capsys):
    out = tmp_path / "secure"
    code = main(["train", "--rounds", "2", "--clients", "6", "--local-epochs", "1", "--secure",
                 "--secure-dropout", "0.2", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "KiB" in printed and "dropped" in printed
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["fedavg"]["aggregator"]["kind"] == "secure-sum"
    for row in doc["rounds"]:
        assert row["agg/dropped"] == 1 and row["agg/survivors"] == 5
        assert row["agg/expansion"] > 1


def _aggregator(*flags):
    return config_from_args(_build_parser().parse_args(["train", *flags])).fedavg.aggregator


@pytest.mark.parametrize(("flags", "expected"), [
    (["--aggregator", "mean"], Mean()),
    (["--aggregator", "median"], CoordinateMedian()),
    (["--aggregator", "trimmed-mean"], TrimmedMean(f=1)),
    (["--aggregator", "krum", "--byzantine-f", "2"], Krum(f=2)),
    (["--aggregator", "multi-krum", "--byzantine-f", "0"], MultiKrum(f=0)),
    (["--aggregator", "bulyan", "--byzantine-f", "2"], Bulyan(f=2)),
    (["--aggregator", "geometric-median"], GeometricMedian()),
    (["--aggregator", "centered-clipping"], CenteredClipping()),
])
def test_aggregator_flag_builds_the_rule(flags, expected):
    assert _aggregator(*flags) == expected


def test_pre_aggregation_wraps_the_rule_and_clip_norm_is_outermost():
    agg = _aggregator("--aggregator", "trimmed-mean", "--byzantine-f", "2", "--nnm", "--bucketing", "2",
                      "--clip-norm", "3")
    assert agg == ClipNorm(max_norm=3.0, inner=Bucketing(bucket_size=2, inner=NearestNeighbourMixing(
        f=2, inner=TrimmedMean(f=2))))
    assert agg.to_dict()["inner"]["inner"] == {"kind": "nnm", "f": 2,
                                               "inner": {"kind": "trimmed-mean", "f": 2}}
    assert _aggregator("--aggregator", "median", "--nnm") == NearestNeighbourMixing(
        f=1, inner=CoordinateMedian())


def test_secure_with_a_rule_is_secure_bucketing():
    agg = _aggregator("--aggregator", "median", "--secure", "--secure-bits", "24", "--clients", "20")
    assert agg == SecureBucketing(bucket_size=5, inner=CoordinateMedian(), secure=SecureSum(bits=24))
    agg = _aggregator("--aggregator", "krum", "--secure", "--bucketing", "3", "--clip-norm", "1")
    assert agg == ClipNorm(max_norm=1.0, inner=SecureBucketing(bucket_size=3, inner=Krum(f=1)))
    agg = _aggregator("--aggregator", "krum", "--secure", "--bucketing", "2",
                      "--bucket-threat-model", "honest-but-curious-server")
    assert agg == SecureBucketing(bucket_size=2, inner=Krum(f=1), threat_model="honest-but-curious-server")
    assert _aggregator("--secure") == SecureSum()  # without --aggregator: as before


@pytest.mark.parametrize("flags, message", [
    # a bucket of 2 leaves its honest client to one colluder
    (["--bucketing", "2"], "--bucketing: must be >= 3 with --secure: a bucket of s clients tolerates s - 2"),
    # 40 clients a round at corrupt fraction 0.1: 4 colluders, so buckets of >= 6
    (["--clients", "40", "--fraction", "1", "--secure-corrupt", "0.1", "--bucketing", "5"],
     "--bucketing: must be >= 6 for a round of 40 clients"),
    (["--secure-corrupt", "0", "--bucketing", "3"], "--bucket-threat-model: 'colluding-clients' with"),
])
def test_secure_buckets_are_checked_against_collusion(flags, message):
    with pytest.raises(FlagError, match=re.escape(message)):
        _aggregator("--aggregator", "median", "--secure", *flags)


def test_bucket_threat_model_needs_secure_buckets():
    with pytest.raises(FlagError, match="--bucket-threat-model: needs --secure"):
        _aggregator("--aggregator", "median", "--bucket-threat-model", "honest-but-curious-server")
    with pytest.raises(FlagError, match="--bucket-threat-model: needs --aggregator"):
        _aggregator("--secure", "--bucket-threat-model", "honest-but-curious-server")


def test_aggregator_replaces_the_config_files_rule(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(ExperimentConfig().to_json())
    assert _aggregator("--config", str(path), "--aggregator", "bulyan", "--byzantine-f", "0") == Bulyan(f=0)


@pytest.mark.parametrize(("flags", "message"), [
    (["--aggregator", "krum", "--clients", "3"],
     "--byzantine-f: --aggregator krum needs n >= f + 3, got f=1 with n=3 (3 clients per round)"),
    (["--aggregator", "bulyan", "--byzantine-f", "2", "--clients", "20", "--fraction", "0.5"],
     "--byzantine-f: --aggregator bulyan needs n >= 4f + 3, got f=2 with n=10 (10 clients per round)"),
    (["--aggregator", "trimmed-mean", "--clients", "8", "--bucketing", "4"],
     "needs 2f < n, got f=1 with n=2 (8 clients per round in buckets of 4)"),
    (["--aggregator", "multi-krum", "--secure", "--clients", "11", "--bucketing", "5"],
     "needs n >= f + 3, got f=1 with n=2 (11 clients per round in secure buckets of >= 5)"),
    (["--aggregator", "median", "--nnm", "--byzantine-f", "4", "--clients", "4"],
     "--byzantine-f: --nnm needs f < n, got f=4 with n=4"),
    (["--aggregator", "median", "--byzantine-f", "1"], "--byzantine-f: --aggregator median takes no f"),
    (["--aggregator", "krum", "--byzantine-f", "-1"], "--byzantine-f: must be >= 0, got -1"),
    (["--aggregator", "median", "--bucketing", "0"], "--bucketing: must be >= 1, got 0"),
    (["--aggregator", "median", "--secure", "--bucketing", "1"], "--bucketing: must be >= 3 with --secure"),
    (["--aggregator", "median", "--secure", "--bucketing", "1", "--bucket-threat-model",
      "honest-but-curious-server"], "--bucketing: must be >= 2 with --secure (a one-client bucket"),
    (["--nnm"], "--nnm: needs --aggregator"),
    (["--bucketing", "2"], "--bucketing: needs --aggregator"),
    (["--aggregator", "nope"], "argument --aggregator: invalid choice: 'nope'"),
])
def test_bad_robust_flags_are_usage_errors_naming_flag_and_bound(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        main(["train", *flags, "--out", str(tmp_path), "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: secagg train" in err and message in err


def test_train_with_a_robust_aggregator(tmp_path, capsys):
    out = tmp_path / "robust"
    assert main(["train", "--rounds", "1", "--clients", "3", "--local-epochs", "1", "--batch-size", "0",
                 "--aggregator", "median", "--out", str(out), "--no-progress"]) == 0
    assert "final accuracy" in capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["fedavg"]["aggregator"] == {"kind": "median"}
    assert [r["round"] for r in doc["rounds"]] == [1] and (out / "results.csv").exists()
    assert ExperimentConfig.from_json(json.dumps(doc["config"])).fedavg.aggregator == CoordinateMedian()
