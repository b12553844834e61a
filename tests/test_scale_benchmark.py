"""``benchmarks/secaggplus_scale.py`` at toy sizes: its figures are measured from a real round (exact
sum checked inside), they add up, and the plot and JSON are written."""

from __future__ import annotations

import json


def test_one_small_round_gives_consistent_figures(load_benchmark):
    bench = load_benchmark("secaggplus_scale")
    row = bench.measure(40, 16)
    assert (row["n"], row["d"]) == (40, 16) and 2 <= row["k"] < 39 and row["t"] <= row["k"] + 1
    assert 0 < row["sent_mean"] <= row["sent_max"] and 0 < row["received_mean"] <= row["received_max"]
    assert row["received_per_k"] == row["received_mean"] / row["k"]
    assert row["wall_s"] >= row["server_s"] > 0 and row["client_s_max"] >= row["client_s_mean"] > 0


def test_the_round_with_clients_in_worker_processes_gives_the_same_kind_of_figures(load_benchmark):
    """--workers 2: the server here, the clients in two processes fed wire bytes over pipes; the sum is
    checked inside, and the per-client bytes are those of the one-process round (same protocol)."""
    bench = load_benchmark("secaggplus_scale")
    pooled, single = bench.measure(40, 16, workers=2), bench.measure(40, 16)
    assert pooled["workers"] == 2 and pooled["worker_peak_mb"] > 0
    assert pooled["received_mean"] == single["received_mean"] and pooled["sent_mean"] == single["sent_mean"]
    assert pooled["wall_s"] >= pooled["server_s"] > 0
    assert pooled["client_s_max"] >= pooled["client_s_mean"] > 0


def test_the_script_writes_its_table_json_and_plot(load_benchmark, tmp_path, capsys):
    bench = load_benchmark("secaggplus_scale")
    assert bench.main(["--n", "20", "30", "--dim", "8", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "| 20 |" in table and "| 30 |" in table
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["n"] for r in rows] == [20, 30]
    assert (tmp_path / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plot_draws_an_earlier_run_beside_this_one(load_benchmark, tmp_path):
    bench = load_benchmark("secaggplus_scale")
    rows = [bench.measure(20, 8), bench.measure(30, 8)]
    earlier = tmp_path / "before.json"
    earlier.write_text(json.dumps([dict(r, received_mean=10 * r["received_mean"]) for r in rows]))
    out = tmp_path / "run"
    assert bench.main(["--n", "20", "--dim", "8", "--out", str(out), "--before", str(earlier)]) == 0
    assert (out / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
