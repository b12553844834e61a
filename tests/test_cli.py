"""The ``secagg`` command line."""

from __future__ import annotations

import json
import subprocess
import sys

from secagg.cli import main


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
