"""The secure-bucketing trade-off benchmark runs, and shows the trade-off it documents."""

from __future__ import annotations

import json


def test_quick_run_shows_small_buckets_filter_a_far_attacker(load_benchmark, tmp_path):
    bench = load_benchmark("secure_bucketing_tradeoff")
    out = tmp_path / "t.json"
    args = ["--quick", "--no-progress", "--json", str(out), "--plot", str(tmp_path / "t.png")]
    assert bench.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    err = {(r["defence"], r["attack"], r["f"]): r["relative_error"] for r in rows}
    n = json.loads(out.read_text())["n"]
    f = n // 10
    assert err[("SecureSum (mean)", "none", 0)] < 1e-3, "no attack: the secure mean is the honest mean"
    assert err[("SecureSum (mean)", "sign-flip", f)] > 1.0
    bucketed = err[("SecureBucketing(s=2, median)", "sign-flip", f)]
    mean = err[("SecureSum (mean)", "sign-flip", f)]
    assert bucketed < 0.5 * mean
    assert (tmp_path / "t.png").stat().st_size > 0
