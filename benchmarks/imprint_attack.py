"""A malicious server's imprint / trap-weights model against secure aggregation, DP and the client check.

One FedSGD round on digits (:func:`attacks.imprint.run_attack`): every client (8 or 32 of them, 8
examples each, disjoint) takes one full-batch SGD step on the *same* malicious model, the updates go
through the library's aggregator, and the server recovers training examples from the aggregate alone.
Rows:

* ``imprint`` (Fowl et al. 2022: an inserted imprint layer of ``--bins`` bins) against the plain mean,
  the secure sum (SecAgg) of 8 and of 32 clients, SecAgg in malicious-server mode, SecAgg+ in
  malicious-server mode (32 clients), DP-FedAvg over the secure sum at noise multipliers 1e-4, 1e-2
  and 1 (8 clients; clip = the norm of one client step on public data) and distributed DP (DDG) at 1;
* ``imprint_inplace`` (the same construction folded into the MLP's own first layer: 64 bins) and
  ``trap_weights`` (Boenisch et al. 2023, unchanged architecture) through SecAgg / SecAgg+ malicious
  mode, and trap weights under DP-FedAvg at 1e-2.

Columns: clients, defence, PSNR (dB) of the recovered images against their best-matching true example
(mean, capped at 150 dB), the fraction of the round's examples recovered at >= 20 dB (RMSE 0.1; the
public mean image, an uninformed guess, scores ``baseline`` dB), the one-round client-level epsilon
(delta 1e-5) of the DP rows, and whether a deployment's client (``NetworkClient.train``: tensor
names, shapes, dtypes must match its configured model) refuses the model.

``clipped_fraction`` in the JSON: for a secure sum, the coordinates clamped to its quantization range
(0: the sum is exact up to rounding); for DP-FedAvg, the clients whose update was clipped to C.

Writes ``--png`` (true images over the best recovered images for the secure sum of 8 and for DP-FedAvg
at 1e-4 and 1e-2) and ``--json`` (every row and the settings). About 30 s on 2 cores.

    python benchmarks/imprint_attack.py
    python benchmarks/imprint_attack.py --json docs/figures/imprint.json --png docs/figures/imprint.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from attacks.imprint import THRESHOLD_DB, AttackResult, malicious_model, run_attack, save_comparison

ROOT = Path(__file__).resolve().parents[1]
BINS = 1024
BATCH = 8
#: (attack, defence, clients, noise multiplier)
ROWS: tuple[tuple[str, str, int, float], ...] = (
    ("imprint", "none", 8, 0.0),
    ("imprint", "secure_sum", 8, 0.0),
    ("imprint", "secure_sum", 32, 0.0),
    ("imprint", "secure_sum_malicious", 8, 0.0),
    ("imprint", "secaggplus_malicious", 32, 0.0),
    ("imprint", "dp_fedavg", 8, 1e-4),
    ("imprint", "dp_fedavg", 8, 1e-2),
    ("imprint", "dp_fedavg", 8, 1.0),
    ("imprint", "distributed_dp", 8, 1.0),
    ("imprint_inplace", "secure_sum_malicious", 8, 0.0),
    ("trap_weights", "secure_sum_malicious", 8, 0.0),
    ("trap_weights", "secaggplus_malicious", 32, 0.0),
    ("trap_weights", "dp_fedavg", 8, 1e-2),
)


def client_check(attack: str, bins: int) -> str:
    """``"refused"`` if a deployment's client (:class:`secagg.transport.node.NetworkClient`) refuses the
    attack's model as not fitting its configured model, else ``"accepted"`` (it trains on it)."""
    import safetensors.torch

    from secagg.crypto.keys import SigningKey
    from secagg.data.digits import load_digits_split
    from secagg.errors import RemoteProtocolError
    from secagg.experiment import ExperimentConfig
    from secagg.task import TaskConfig, make_task
    from secagg.transport.envelope import Work, WorkKind
    from secagg.transport.node import NetworkClient

    config = ExperimentConfig(task=TaskConfig(num_clients=2))
    honest = make_task(config.task, seed=config.seed).model
    model, _ = malicious_model(attack, honest, load_digits_split()[2], bins=bins, examples=64)
    client = NetworkClient("127.0.0.1:1", 0, SigningKey.generate())  # never connects: train() is local
    client._setup(config.to_json())  # what the client process does at login, from the run's config
    try:
        client.train(Work(WorkKind.TASK, 1, 0, safetensors.torch.save(model.state_dict())))
        return "accepted"
    except RemoteProtocolError:
        return "refused"
    finally:
        client.close()


def defence_label(defence: str, z: float) -> str:
    return f"{defence} z={z:g}" if z > 0 else defence


def run(bins: int = BINS, batch_size: int = BATCH, seed: int = 0) -> dict[str, Any]:
    """Every row of :data:`ROWS`: the table's values, and the results needed for the figure."""
    rows, results = [], {}
    checks = {a: client_check(a, bins) for a in sorted({r[0] for r in ROWS})}
    for attack, defence, clients, z in ROWS:
        result = run_attack(attack, defence, clients=clients, batch_size=batch_size, bins=bins,
                            noise_multiplier=z, seed=seed)
        results[(attack, defence, clients, z)] = result
        s = result.summary()
        keep = ("examples", "candidates", "psnr_mean", "psnr_max", "fraction_recovered", "baseline_psnr",
                "epsilon", "pixel_error_bound", "clipped_fraction", "seconds")
        rows.append({"attack": attack, "defence": defence, "clients": clients, "noise_multiplier": z,
                     **{k: s.get(k) for k in keep},
                     # the session's graph: degree n - 1 is the full graph, less is SecAgg+
                     "graph_degree": s.get("degree", s.get("inner/degree")),
                     "threshold": s.get("threshold", s.get("inner/threshold")),
                     "client_check": checks[attack]})
    return {"rows": rows, "results": results}


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(int(spec.split(".")[0]))
    return format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'attack':<16}{'clients':>8}  {'defence':<26}{'PSNR mean':>10}{'PSNR max':>10}"
             f"{'>=20 dB':>9}{'epsilon':>11}  client check",
             "-" * 104]
    for r in rows:
        defence = defence_label(r["defence"], r["noise_multiplier"])
        lines.append(f"{r['attack']:<16}{r['clients']:>8}  {defence:<26}"
                     f"{_fmt(r['psnr_mean'], '10.1f')}{_fmt(r['psnr_max'], '10.1f')}"
                     f"{r['fraction_recovered']:>9.2f}{_fmt(r['epsilon'], '11.3g')}  {r['client_check']}")
    base = statistics_baseline(rows)
    lines.append(f"(uninformed guess, the public mean image: {base:.1f} dB; threshold {THRESHOLD_DB:g} dB)")
    return "\n".join(lines)


def statistics_baseline(rows: list[dict[str, Any]]) -> float:
    return sum(r["baseline_psnr"] for r in rows) / len(rows)


def figure(results: dict[tuple[str, str, int, float], AttackResult], path: Path) -> Path:
    """The round's first 10 true images (whether recovered or not) over their best matches recovered
    through the secure sum of 8, and under DP-FedAvg at 1e-4 and 1e-2."""
    secure = results[("imprint", "secure_sum", 8, 0.0)]
    rows = [("SecAgg, 8 clients", secure.recovered),
            ("DP-FedAvg z=1e-4", results[("imprint", "dp_fedavg", 8, 1e-4)].recovered),
            ("DP-FedAvg z=1e-2", results[("imprint", "dp_fedavg", 8, 1e-2)].recovered)]
    return save_comparison(path, secure.truth[:10], rows,
                           f"imprint model ({BINS} bins), one FedSGD round of 8 clients x {BATCH} digits: "
                           "true (top) vs recovered from the aggregate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bins", type=int, default=BINS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "figures" / "imprint.json")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "figures" / "imprint.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small models: one thread is fastest on a shared 2-core machine
    started = time.perf_counter()
    out = run(args.bins, BATCH, args.seed)
    print(table(out["rows"]))
    figure(out["results"], args.png)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "settings": {"bins": args.bins, "batch_size": BATCH, "seed": args.seed, "threshold_db": THRESHOLD_DB,
                     "round": "FedSGD: one full-batch local SGD step (lr 0.1) per client",
                     "dp_clip": "norm of one client step on a public batch (digits test split)",
                     "epsilon": "client-level, this one round, delta 1e-5"},
        "rows": out["rows"]}, indent=2) + "\n")
    print(f"wrote {args.png} and {args.json} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
