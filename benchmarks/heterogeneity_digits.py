"""What the algorithms for heterogeneity buy on digits: FedAvg against FedAvgM, FedProx, FedAdam, FedYogi,
FedAdagrad, SCAFFOLD and FedBN on label-skew and feature-shift splits, plain, over a secure sum and with
central DP.

Setting: digits, 10 clients, every client in every round, ``--rounds`` (R = 30) rounds, local training
``ClientConfig()`` (E = 5 epochs, B = 10, lr 0.1: enough local work for client drift to matter), the
``mlp`` model, seeds 0 .. ``--seeds``-1 (the seed sets the split, the sites, the initial model and the
DP noise). Torch runs on one thread per process (``--jobs`` processes run cells in parallel).

Splits (:data:`SPLITS`): ``iid`` (the reference), ``label`` (Dirichlet(0.3) over labels), ``shift``
(IID labels, each client a site seen through ``FeatureShift()`` at its default strengths) and
``label+shift`` (both). Accuracy is on the clean (as loaded) test set; for the splits with a feature
shift the final model is also evaluated on the test set shown through the sites
(``FeatureShift(test="sites")``, one seeded site per test example), reported as ``sites``.

Algorithms (:data:`ALGORITHMS`; a new one is one entry: a name and a function of the rounds that returns
its :class:`~secagg.fedavg.FedAvgConfig` keyword arguments):

* ``FedAvg``: server SGD with lr 1 (the plain mean).
* ``FedAvgM``: server SGD with momentum 0.9 (Hsu et al. 2019), server lr :data:`SERVER_LR` ``["fedavgm"]``.
* ``FedProx mu=0.01`` and ``FedProx mu=0.1`` (Li et al. 2020): ``ClientConfig(proximal_mu=mu)``.
* ``FedAdam``, ``FedYogi``, ``FedAdagrad`` (Reddi et al. 2021, Algorithm 2 as the library implements
  it: beta1 0.9, beta2 0.99, tau 1e-3, no bias correction), server lr from :data:`SERVER_LR`.
* ``SCAFFOLD`` (Karimireddy et al. 2020, option II; ``FedAvgConfig(scaffold=True)``), server lr 1.
* ``FedAvg mlp-bn`` and ``FedBN mlp-bn`` (Li et al. 2021; ``norm_layers="local"``): the ``mlp-bn``
  model (a BatchNorm1d after the hidden layer), federated whole or with each client's BatchNorm kept
  on the client. FedBN has no global model: its accuracies are each site's own model (shared layers,
  its BatchNorm), on the clean test set averaged over sites, and on the sites' test set each example
  classified by its own site's model (:func:`secagg.fedavg.server.evaluate_sites`).

Server learning rates were tuned lightly on the IID split only (seed 0, 30 rounds, plain; ``--tune``
reruns the sweep): FedAvgM lr in {1, 0.3, 0.1}, FedAdam and FedYogi in {0.003, 0.01, 0.03, 0.1},
FedAdagrad in {0.01, 0.03, 0.1}; the best mean accuracy of the last 5 rounds was kept: FedAvgM 0.3
(96.3% against 95.3% at lr 1), FedAdam 0.03 (96.6%; 0.1 gave the same within one test example, 0.01
96.3%, 0.003 90.1%), FedYogi 0.03 (96.5%), FedAdagrad 0.1 (96.8%; 0.03 95.2%, 0.01 86.0%).

Modes (:data:`MODES`):

* ``plain``: the weighted mean in the clear.
* ``secure``: the same weighted mean through :class:`secagg.aggregation.SecureSum` (full graph, 32-bit
  ring, per-coordinate range 1.0, the ``secagg train --secure`` defaults). It equals ``plain`` up to
  quantization error, so the table reports only the largest |accuracy difference| to ``plain``.
* ``dp``: central DP-FedAvg (:class:`dp.DPFedAvg`, as ``secagg train --dp central`` builds it):
  clip C = :data:`DP_CLIP` per client update, Gaussian noise z = :data:`DP_Z` on the sum, divided by
  the 10 clients, delta = 1e-5, RDP accountant, no amplification (every client takes part every
  round). The epsilon printed is the one the run's accountant reports after the last round. With only
  10 clients client-level DP is expensive: the epsilon is large. Noise from a seeded keystream
  (``simulation_seed``: benchmark only, it protects nothing).
* ``dp-secure`` (not in the default grid): the same DP-FedAvg over an unweighted secure sum.

Metric: the final test accuracy and the mean over the last 5 rounds, each averaged over seeds.
Output: a markdown table (rows: algorithm; columns: split x mode, "final / last-5"), a JSON file
(``--json``, default ``OUT/heterogeneity.json``) and a PNG heatmap of final accuracy
(``OUT/heterogeneity.png``), ``OUT`` = ``--out`` (default ``runs/heterogeneity``).

    python benchmarks/heterogeneity_digits.py               # 2 seeds, 30 rounds, 240 runs (~45 min, --jobs 2)
    python benchmarks/heterogeneity_digits.py --jobs 2 --seeds 2 --rounds 30
    python benchmarks/heterogeneity_digits.py --quick         # 3 rounds, 1 seed
    python benchmarks/heterogeneity_digits.py --quick --algorithms FedAvg,FedProx --splits label \
        --modes plain,secure
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from dp import DPFedAvg
from secagg.aggregation import Aggregator, Mean, SecureSum
from secagg.data.partition import PartitionConfig
from secagg.data.shift import FeatureShift
from secagg.experiment import ExperimentConfig, run_experiment
from secagg.fedavg import ClientConfig, FedAvgConfig
from secagg.fedavg.optimizers import ServerAdagrad, ServerAdam, ServerSGD, ServerYogi
from secagg.fedavg.server import evaluate, evaluate_sites
from secagg.task import TaskConfig, build_task

CLIENTS = 10
DELTA = 1e-5
DP_CLIP = 0.5
DP_Z = 1.0
SECURE_RANGE = 1.0
LAST = 5
#: server learning rates, tuned lightly on IID (see the module docstring and ``--tune``)
SERVER_LR = {"fedavgm": 0.3, "adam": 0.03, "yogi": 0.03, "adagrad": 0.1}
#: label split x whether clients are feature-shifted sites
SPLITS: dict[str, tuple[PartitionConfig, bool]] = {
    "iid": (PartitionConfig(kind="iid"), False),
    "label": (PartitionConfig(kind="dirichlet", alpha=0.3), False),
    "shift": (PartitionConfig(kind="iid"), True),
    "label+shift": (PartitionConfig(kind="dirichlet", alpha=0.3), True),
}


def _client(mu: float = 0.0) -> ClientConfig:
    return ClientConfig(proximal_mu=mu)  # E=5, B=10, lr 0.1


#: algorithm name -> FedAvgConfig keyword arguments (client config, server optimizer, SCAFFOLD, FedBN),
#: plus ``"model"`` when the algorithm needs another model than :data:`MODEL` (FedBN: BatchNorm)
ALGORITHMS: dict[str, Callable[[], dict[str, Any]]] = {
    "FedAvg": lambda: {"client": _client(), "server_optimizer": ServerSGD(lr=1.0)},
    "FedAvgM": lambda: {"client": _client(),
                        "server_optimizer": ServerSGD(lr=SERVER_LR["fedavgm"], momentum=0.9)},
    "FedProx mu=0.01": lambda: {"client": _client(0.01), "server_optimizer": ServerSGD(lr=1.0)},
    "FedProx mu=0.1": lambda: {"client": _client(0.1), "server_optimizer": ServerSGD(lr=1.0)},
    "FedAdam": lambda: {"client": _client(), "server_optimizer": ServerAdam(lr=SERVER_LR["adam"])},
    "FedYogi": lambda: {"client": _client(), "server_optimizer": ServerYogi(lr=SERVER_LR["yogi"])},
    "FedAdagrad": lambda: {"client": _client(), "server_optimizer": ServerAdagrad(lr=SERVER_LR["adagrad"])},
    "SCAFFOLD": lambda: {"client": _client(), "server_optimizer": ServerSGD(lr=1.0), "scaffold": True},
    "FedAvg mlp-bn": lambda: {"model": "mlp-bn", "client": _client(),
                              "server_optimizer": ServerSGD(lr=1.0)},
    "FedBN mlp-bn": lambda: {"model": "mlp-bn", "client": _client(), "server_optimizer": ServerSGD(lr=1.0),
                             "norm_layers": "local"},
}
MODEL = "mlp"


def _dp(inner: Aggregator, seed: int) -> DPFedAvg:
    return DPFedAvg(clip=DP_CLIP, noise_multiplier=DP_Z, expected_clients=float(CLIENTS), sample_rate=1.0,
                    sampling="none", delta=DELTA, accountant="rdp", inner=inner, simulation_seed=seed)


#: mode name -> the aggregator for a seed
MODES: dict[str, Callable[[int], Aggregator]] = {
    "plain": lambda seed: Mean(),
    "secure": lambda seed: SecureSum(value_range=SECURE_RANGE),
    "dp": lambda seed: _dp(Mean(weighted=False), seed),
    "dp-secure": lambda seed: _dp(SecureSum(value_range=SECURE_RANGE, weighted=False, max_clients=CLIENTS),
                                  seed),
}
DEFAULT_MODES = ("plain", "secure", "dp")


def task_config(split: str, *, sites: bool = False, model: str = MODEL) -> TaskConfig:
    partition, shifted = SPLITS[split]
    shift = FeatureShift(test="sites") if sites else FeatureShift() if shifted else None
    return TaskConfig(num_clients=CLIENTS, partition=partition, shift=shift, model=model)


def run_cell(split: str, algorithm: str, mode: str, seed: int, rounds: int) -> dict[str, Any]:
    """One run: its per-round accuracies, the final accuracy on the sites' test set (shifted splits),
    the final epsilon and the run time."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    kwargs = ALGORITHMS[algorithm]()
    model = kwargs.pop("model", MODEL)
    fedavg = FedAvgConfig(rounds=rounds, aggregator=MODES[mode](seed), **kwargs)
    result = run_experiment(ExperimentConfig(task=task_config(split, model=model), fedavg=fedavg, seed=seed))
    accuracy = [float(r["accuracy"]) for r in result.history]
    cell: dict[str, Any] = {"split": split, "algorithm": algorithm, "mode": mode, "seed": seed,
                            "accuracy": accuracy, "final": accuracy[-1],
                            "last5": statistics.fmean(accuracy[-LAST:]),
                            "epsilon": result.history[-1].get("epsilon")}
    if SPLITS[split][1]:  # same training data; the test set seen through the sites' acquisitions
        data = build_task(task_config(split, sites=True, model=model), seed=seed).data
        state, local = result.state, result.fedavg.layout.local
        cell["sites_final"] = (evaluate_sites(result.fedavg.model, state.model, state.client_states, local,
                                              data.test_x, data.test_y, CLIENTS, data.test_site)
                               if local else evaluate(result.fedavg.model, state.model, data.test_x,
                                                      data.test_y))["accuracy"]
    clipped = [r.get("agg/clipped_fraction") for r in result.history if "agg/clipped_fraction" in r]
    if clipped:
        cell["max_clipped_fraction"] = max(float(c) for c in clipped)
    cell["seconds"] = time.perf_counter() - start
    return cell


def _init_worker() -> None:
    torch.set_num_threads(1)


def run_grid(splits: Sequence[str], algorithms: Sequence[str], modes: Sequence[str], seeds: int,
             rounds: int, jobs: int = 1, progress: bool = True) -> list[dict[str, Any]]:
    cells = [(s, a, m, seed, rounds) for s in splits for a in algorithms for m in modes
             for seed in range(seeds)]
    out: list[dict[str, Any]] = []

    def report(cell: dict[str, Any]) -> None:
        out.append(cell)
        if progress:
            print(f"[{len(out)}/{len(cells)}] {cell['split']:<12} {cell['algorithm']:<16} {cell['mode']:<9} "
                  f"seed {cell['seed']}: final {cell['final']:.4f} ({cell['seconds']:.1f} s)",
                  file=sys.stderr, flush=True)

    if jobs <= 1:
        for c in cells:
            report(run_cell(*c))
    else:
        with ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker) as pool:
            for cell in pool.map(run_cell, *zip(*cells, strict=True)):
                report(cell)
    return out


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (algorithm, split, mode): mean over seeds of final, last-5 and (shifted splits) sites
    accuracy; the largest |secure - plain| final/last-5 accuracy difference over matching runs; the
    DP epsilon."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["algorithm"], c["split"], c["mode"]), []).append(c)
    summary = []
    for (alg, split, mode), runs in groups.items():
        row = {"algorithm": alg, "split": split, "mode": mode, "seeds": len(runs),
               "final": statistics.fmean(r["final"] for r in runs),
               "last5": statistics.fmean(r["last5"] for r in runs)}
        if "sites_final" in runs[0]:
            row["sites_final"] = statistics.fmean(r["sites_final"] for r in runs)
        if runs[0]["epsilon"] is not None and mode.startswith("dp"):
            row["epsilon"] = max(r["epsilon"] for r in runs)
        summary.append(row)
    by_key = {(c["algorithm"], c["split"], c["mode"], c["seed"]): c for c in cells}
    diffs = [max(abs(c["final"] - p["final"]), abs(c["last5"] - p["last5"]))
             for (a, s, m, seed), c in by_key.items() if m == "secure"
             for p in [by_key.get((a, s, "plain", seed))] if p is not None]
    epsilons = [r["epsilon"] for r in summary if "epsilon" in r]
    return {"cells": summary,
            "secure_vs_plain_max_abs_diff": max(diffs) if diffs else None,
            "dp_epsilon": max(epsilons) if epsilons else None}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown_table(summary: dict[str, Any], algorithms: Sequence[str], splits: Sequence[str],
                   modes: Sequence[str]) -> str:
    """Rows: algorithm; columns: split x mode ("final / last-5" accuracy in %, mean over seeds); a
    ``sites`` column after each shifted split's plain column. ``secure`` gets no columns when a
    ``plain`` column exists (it matches it: the difference is printed below the table)."""
    cells = {(r["algorithm"], r["split"], r["mode"]): r for r in summary["cells"]}
    shown = [m for m in modes if not (m == "secure" and "plain" in modes)]
    columns: list[tuple[str, str, str]] = []  # (header, split, key)
    for split in splits:
        for mode in shown:
            columns.append((f"{split} {mode}", split, mode))
            if mode == "plain" and SPLITS[split][1]:
                columns.append((f"{split} plain, sites test", split, "sites"))
    lines = ["| algorithm | " + " | ".join(h for h, _, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for alg in algorithms:
        out = []
        for _, split, key in columns:
            if key == "sites":
                r = cells.get((alg, split, "plain"))
                out.append(_pct(r["sites_final"]) if r and "sites_final" in r else "")
            else:
                r = cells.get((alg, split, key))
                out.append(f"{_pct(r['final'])} / {_pct(r['last5'])}" if r else "")
        lines.append(f"| {alg} | " + " | ".join(out) + " |")
    notes = []
    if summary["secure_vs_plain_max_abs_diff"] is not None:
        notes.append(f"secure aggregation vs plain: max |accuracy difference| over all runs = "
                     f"{summary['secure_vs_plain_max_abs_diff']:.4f}")
    if summary["dp_epsilon"] is not None:
        notes.append(f"DP: central DP-FedAvg, z = {DP_Z}, clip = {DP_CLIP}, delta = {DELTA:g}, "
                     f"epsilon = {summary['dp_epsilon']:.1f} (RDP accountant, after the last round)")
    return "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "")


def heatmap(summary: dict[str, Any], algorithms: Sequence[str], splits: Sequence[str],
            modes: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cells = {(r["algorithm"], r["split"], r["mode"]): r for r in summary["cells"]}
    cols = [(s, m) for s in splits for m in modes]
    grid = np.array([[cells[(a, s, m)]["final"] if (a, s, m) in cells else np.nan for s, m in cols]
                     for a in algorithms])
    fig, ax = plt.subplots(figsize=(1.0 + 1.05 * len(cols), 0.9 + 0.45 * len(algorithms)))
    im = ax.imshow(grid, cmap="viridis", vmin=np.nanmin(grid) if np.isfinite(grid).any() else 0, vmax=1.0,
                   aspect="auto")
    ax.set_xticks(range(len(cols)), [f"{s}\n{m}" for s, m in cols], fontsize=8)
    ax.set_yticks(range(len(algorithms)), list(algorithms), fontsize=8)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, _pct(grid[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] < np.nanmean(grid) else "black")
    fig.colorbar(im, ax=ax, label="final test accuracy")
    ax.set_title("digits, 10 clients: final test accuracy (mean over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tune(rounds: int) -> None:
    """The light server-lr sweep on IID (seed 0, plain) the defaults in :data:`SERVER_LR` came from."""
    torch.set_num_threads(1)
    grid = [("fedavgm", lambda lr: ServerSGD(lr=lr, momentum=0.9), (1.0, 0.3, 0.1)),
            ("adam", lambda lr: ServerAdam(lr=lr), (0.003, 0.01, 0.03, 0.1)),
            ("yogi", lambda lr: ServerYogi(lr=lr), (0.003, 0.01, 0.03, 0.1)),
            ("adagrad", lambda lr: ServerAdagrad(lr=lr), (0.01, 0.03, 0.1))]
    for name, make, lrs in grid:
        for lr in lrs:
            fedavg = FedAvgConfig(rounds=rounds, client=_client(), server_optimizer=make(lr))
            acc = [h["accuracy"] for h in
                   run_experiment(ExperimentConfig(task=task_config("iid"), fedavg=fedavg, seed=0)).history]
            print(f"{name} lr {lr:g}: final {acc[-1]:.4f}, last-5 {statistics.fmean(acc[-LAST:]):.4f}",
                  flush=True)


def _names(text: str | None, known: Sequence[str], flag: str, default: Sequence[str]) -> list[str]:
    if text is None:
        return list(default)
    names = [t.strip() for t in text.split(",") if t.strip()]
    out = []
    for n in names:
        matches = [k for k in known if k == n] or [k for k in known if k.startswith(n)]
        if not matches:
            raise SystemExit(f"{flag}: unknown {n!r}; choose from {', '.join(known)}")
        out.extend(m for m in matches if m not in out)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 2; --quick 1)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 30; --quick 3)")
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1 seed")
    parser.add_argument("--algorithms",
                        help=f"comma list (a prefix picks all it starts): {', '.join(ALGORITHMS)}")
    parser.add_argument("--splits", help=f"comma list: {', '.join(SPLITS)}")
    parser.add_argument("--modes", help=f"comma list: {', '.join(MODES)} (default {','.join(DEFAULT_MODES)})")
    parser.add_argument("--jobs", type=int, default=1, help="cells in parallel processes (default 1)")
    parser.add_argument("--out", default="runs/heterogeneity", help="folder for the JSON and the PNG")
    parser.add_argument("--json", default=None, help="JSON path (default OUT/heterogeneity.json)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--tune", action="store_true", help="only the server-lr sweep on IID")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else 3 if args.quick else 30
    seeds = args.seeds if args.seeds is not None else 1 if args.quick else 2
    if rounds < 1 or seeds < 1 or args.jobs < 1:
        raise SystemExit("--rounds, --seeds and --jobs must be >= 1")
    torch.set_num_threads(1)
    if args.tune:
        tune(rounds)
        return {}
    algorithms = _names(args.algorithms, list(ALGORITHMS), "--algorithms", list(ALGORITHMS))
    splits = _names(args.splits, list(SPLITS), "--splits", list(SPLITS))
    modes = _names(args.modes, list(MODES), "--modes", DEFAULT_MODES)
    start = time.perf_counter()
    cells = run_grid(splits, algorithms, modes, seeds, rounds, args.jobs, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    summary = summarize(cells)
    table = markdown_table(summary, algorithms, splits, modes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else out / "heterogeneity.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    png_path = out / "heterogeneity.png"
    heatmap(summary, algorithms, splits, modes, png_path)
    settings = {"clients": CLIENTS, "rounds": rounds, "seeds": seeds, "client": _client().to_dict(),
                "server_lr": SERVER_LR, "dp": {"clip": DP_CLIP, "noise_multiplier": DP_Z, "delta": DELTA},
                "secure_range": SECURE_RANGE, "splits": splits, "algorithms": algorithms, "modes": modes,
                "seconds": elapsed, "jobs": args.jobs}
    result = {"settings": settings, **summary, "table": table, "runs": cells,
              "json": str(json_path), "png": str(png_path)}
    json_path.write_text(json.dumps(result, indent=2))
    print(table)
    print(f"\n{len(cells)} runs in {elapsed:.0f} s ({args.jobs} process(es)); "
          f"JSON {json_path}, PNG {png_path}")
    return result


if __name__ == "__main__":
    main()
