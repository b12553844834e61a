"""The heterogeneity benchmark runs a tiny grid and writes its table, JSON and PNG."""

from __future__ import annotations

import json


def test_quick_grid_writes_table_json_png_and_secure_matches_plain(tmp_path, load_benchmark, capsys):
    bench = load_benchmark("heterogeneity_digits")
    out = tmp_path / "het"
    json_path = tmp_path / "het.json"
    result = bench.main(["--quick", "--rounds", "2", "--algorithms", "FedAvg,FedAdam", "--splits",
                         "label+shift", "--modes", "plain,secure", "--out", str(out),
                         "--json", str(json_path), "--no-progress"])
    printed = capsys.readouterr().out
    assert json_path.exists() and (out / "heterogeneity.png").stat().st_size > 0
    data = json.loads(json_path.read_text())
    assert data["settings"]["rounds"] == 2 and data["settings"]["seeds"] == 1
    assert {(c["algorithm"], c["mode"]) for c in data["cells"]} == {
        (a, m) for a in ("FedAvg", "FedAdam") for m in ("plain", "secure")}
    for cell in data["cells"]:
        for key in ("final", "last5", "sites_final"):
            assert 0.0 <= cell[key] <= 1.0
    for run in data["runs"]:
        assert len(run["accuracy"]) == 2 and all(0.0 <= a <= 1.0 for a in run["accuracy"])
    plain = {c["algorithm"]: c for c in data["cells"] if c["mode"] == "plain"}
    secure = {c["algorithm"]: c for c in data["cells"] if c["mode"] == "secure"}
    assert abs(secure["FedAvg"]["final"] - plain["FedAvg"]["final"]) <= 0.02
    assert data["secure_vs_plain_max_abs_diff"] <= 0.02
    # the table: one row per algorithm, secure folded into the difference line
    assert "| FedAvg |" in printed and "| FedAdam |" in printed and "label+shift plain, sites test" in printed
    assert "secure aggregation vs plain: max |accuracy difference|" in printed
    assert result["table"] in printed
