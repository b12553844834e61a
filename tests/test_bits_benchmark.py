"""The bits benchmark runs a tiny grid and writes its table, JSON and PNG with consistent figures."""

from __future__ import annotations

import json


def test_quick_grid_reports_fewer_bytes_at_fewer_bits(tmp_path, load_benchmark, capsys):
    bench = load_benchmark("bits_digits")
    result = bench.main(["--quick", "--rounds", "1", "--out", str(tmp_path), "--no-progress"])
    printed = capsys.readouterr().out
    assert (tmp_path / "bits.png").stat().st_size > 0
    data = json.loads((tmp_path / "bits.json").read_text())
    rows = {(r["mode"], r["bits"]): r for r in data["rows"]}
    modes = ("grid", "rotation", "rotation-dct")
    assert set(rows) == {("plain", 32)} | {(m, b) for m in modes for b in (32, 8)}
    # the masked input is packed at b bits: a quarter of the bytes at 8 bits, for every encoding
    for mode in modes:
        assert rows[mode, 8]["masked_input_bytes"] * 4 == rows[mode, 32]["masked_input_bytes"]
        assert rows[mode, 8]["client_bytes"] < rows[mode, 32]["client_bytes"]
    assert rows["grid", 32]["masked_input_bytes"] == 4 * 4811
    assert rows["rotation", 32]["masked_input_bytes"] == 4 * 8193  # pad_length(4810) + the weight
    assert rows["rotation-dct", 32]["masked_input_bytes"] == 4 * 4811  # the DCT pads nothing
    for mode in ("rotation", "rotation-dct"):
        assert rows[mode, 8]["wrap_probability"] <= 1e-9 * (1 + 1e-9)
    assert "| grid | 8 |" in printed and "| rotation | 8 |" in printed and result["table"] in printed
