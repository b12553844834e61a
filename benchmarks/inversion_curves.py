"""Gradient inversion on digits: reconstruction PSNR vs clients summed (secure aggregation) and vs DP noise.

What an honest-but-curious server recovers from what it sees, on the digits MLP (4810 parameters) at its
initial weights (``build_task(TaskConfig(model="mlp"), seed=--seed)``), for ``--trials`` disjoint sets of
training examples per point (median over trials reported, with min and max):

* **PSNR vs k** (k = 1, 2, 4, 8, 16, 32): the server sees the *sum* of k clients' single-example
  gradients (:func:`attacks.inversion.summed_gradient`). Attacks:

  - ``dlg-1``: DLG (Zhu et al. 2019) reconstructing *one* image with a learned soft label (30 L-BFGS
    steps), the attack as published;
  - ``dlg-k``: DLG reconstructing k images jointly, labels known (iDLG label for k = 1; the true
    labels for k > 1, an upper bound on the attacker's knowledge);
  - ``ig-k``: Inverting Gradients (Geiping et al. 2020), k images, labels as ``dlg-k``, 300 signed-Adam
    steps, lr 0.1, TV weight 1e-4, 1 restart;
  - ``analytic``: :func:`attacks.inversion.analytic_first_layer`, the closed-form first-layer
    recovery ``dW[i] / db[i]`` at the unit with the largest bias gradient (one image).

  The score of a reconstruction is its best-match PSNR: the highest PSNR of any reconstructed image
  against any of the k true images (the attacker wins if it recovers *any* client's digit). The
  baseline is the same score for the training-set mean image (an uninformed guess: it also improves
  with k, as there are more digits to match).
* **PSNR vs noise multiplier** z in (0, 0.01, 0.1, 1), k = 1: the gradient is clipped to C = the median
  L2 norm of single-example gradients (over 64 training examples) and N(0, (zC)^2) added per coordinate
  (:func:`attacks.inversion.clip_and_noise`: *simulation* noise from a seeded generator; the deployed
  defence's noise comes from :mod:`dp`). Attacks ``dlg-k``, ``ig-k``, ``analytic`` with k = 1 and the
  iDLG label recovered from the noisy gradient (its accuracy is reported).
* **FedAvg proxy** (k = 1): the server sees a ``steps``-step local SGD update (lr 0.05, summed loss) and
  matches ``-update / (lr * steps)`` (:func:`attacks.inversion.fedavg_update_target`), steps 1, 2, 5.

Writes a PNG with the first two curves (``--png``), and ``--json``. Torch runs on one thread.

    python benchmarks/inversion_curves.py                    # 5 trials per point
    python benchmarks/inversion_curves.py --quick            # 2 trials, k <= 8
    python benchmarks/inversion_curves.py --json out.json --png curves.png
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attacks.inversion import (
    Reconstruction,
    analytic_first_layer,
    best_match_psnr,
    clip_and_noise,
    dlg,
    fedavg_update_target,
    grad_norm,
    idlg_label,
    inverting_gradients,
    single_example_gradient,
    summed_gradient,
)
from secagg.task import TaskConfig, build_task

SHAPE = (1, 8, 8)
KS = (1, 2, 4, 8, 16, 32)
NOISES = (0.0, 0.01, 0.1, 1.0)
STEPS = (1, 2, 5)
FEDAVG_LR = 0.05
COLORS = {"dlg-1": "tab:blue", "dlg-k": "tab:orange", "ig-k": "tab:green", "analytic": "tab:red",
          "baseline": "tab:gray"}


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _attacks(model: torch.nn.Module, grads: list[torch.Tensor], k: int, labels: torch.Tensor | str,
             seed: int) -> dict[str, Callable[[], Reconstruction]]:
    return {
        "dlg-k": lambda: dlg(model, grads, SHAPE, 10, iterations=30, seed=seed, num_images=k, label=labels),
        "analytic": lambda: analytic_first_layer(model, grads, SHAPE),
        "ig-k": lambda: inverting_gradients(model, grads, SHAPE, labels, iterations=300, lr=0.1,
                                            tv_weight=1e-4, restarts=1, seed=seed),
    }


def _score(rec: Reconstruction, truth: torch.Tensor) -> float:
    return float(best_match_psnr(rec.x, truth).max())


def run(*, ks: Sequence[int], noises: Sequence[float], steps: Sequence[int], trials: int,
        seed: int) -> dict[str, Any]:
    task = build_task(TaskConfig(model="mlp"), seed=seed)
    model, data = task.model, task.data
    mean_image = data.train_x.mean(0, keepdim=True)
    out: dict[str, Any] = {"vs_k": {}, "vs_noise": {}, "fedavg_proxy": {}}

    for k in ks:
        scores: dict[str, list[float]] = {n: [] for n in ("dlg-1", "dlg-k", "ig-k", "analytic", "baseline")}
        times: dict[str, list[float]] = {name: [] for name in ("dlg-1", "dlg-k", "ig-k", "analytic")}
        for t in range(trials):
            xs, ys = data.train_x[t * k : (t + 1) * k], data.train_y[t * k : (t + 1) * k]
            grads = summed_gradient(model, xs, ys)
            attacks = _attacks(model, grads, k, "idlg" if k == 1 else ys, seed + t)
            attacks["dlg-1"] = lambda g=grads, t=t: dlg(model, g, SHAPE, 10, iterations=30, seed=seed + t)
            for name, attack in attacks.items():
                start = time.perf_counter()
                rec = attack()
                times[name].append(time.perf_counter() - start)
                scores[name].append(_score(rec, xs))
            scores["baseline"].append(float(best_match_psnr(mean_image, xs)))
        out["vs_k"][str(k)] = {name: _summary(v) for name, v in scores.items()}
        out["vs_k"][str(k)]["seconds"] = {name: statistics.median(v) for name, v in times.items()}
        print(f"k={k:>2}  " + "  ".join(f"{n} {out['vs_k'][str(k)][n]['median']:6.1f}" for n in scores)
              + " dB", flush=True)

    pool = data.train_x[-64:], data.train_y[-64:]
    clip = statistics.median(grad_norm(single_example_gradient(model, x, y))
                             for x, y in zip(*pool, strict=True))
    out["clip"] = clip
    for z in noises:
        scores = {"dlg-k": [], "ig-k": [], "analytic": [], "baseline": []}
        label_ok = []
        for t in range(trials):
            x, y = data.train_x[t : t + 1], data.train_y[t : t + 1]
            noisy = clip_and_noise(single_example_gradient(model, x, y), clip=clip, noise_multiplier=z,
                                   seed=seed * 1000 + t)
            label_ok.append(float(idlg_label(noisy[-2]) == int(y)))
            for name, attack in _attacks(model, noisy, 1, "idlg", seed + t).items():
                scores[name].append(_score(attack(), x))
            scores["baseline"].append(float(best_match_psnr(mean_image, x)))
        out["vs_noise"][str(z)] = {name: _summary(v) for name, v in scores.items()}
        out["vs_noise"][str(z)]["idlg_label_accuracy"] = statistics.mean(label_ok)
        print(f"z={z:<5} " + "  ".join(f"{n} {out['vs_noise'][str(z)][n]['median']:6.1f}" for n in scores)
              + f" dB  iDLG label acc {statistics.mean(label_ok):.2f}", flush=True)

    for s in steps:
        scores = {"dlg-k": [], "ig-k": [], "analytic": []}
        for t in range(trials):
            x, y = data.train_x[t : t + 1], data.train_y[t : t + 1]
            local = copy.deepcopy(model)
            opt = torch.optim.SGD(local.parameters(), lr=FEDAVG_LR)
            for _ in range(s):
                opt.zero_grad()
                F.cross_entropy(local(x), y, reduction="sum").backward()
                opt.step()
            update = [a.detach() - b.detach() for a, b in zip(local.parameters(), model.parameters(),
                                                               strict=True)]
            proxy = fedavg_update_target(model, update, lr=FEDAVG_LR, steps=s)
            for name, attack in _attacks(model, proxy, 1, "idlg", seed + t).items():
                scores[name].append(_score(attack(), x))
        out["fedavg_proxy"][str(s)] = {name: _summary(v) for name, v in scores.items()}
        print(f"steps={s}  " + "  ".join(f"{n} {out['fedavg_proxy'][str(s)][n]['median']:6.1f}"
                                        for n in scores) + " dB", flush=True)
    return out


def _plain(value: Any) -> Any:
    """JSON-safe copy: infinite PSNRs (exact reconstructions) become the string "inf"."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    ks = [int(k) for k in results["vs_k"]]
    for name in ("dlg-1", "dlg-k", "ig-k", "analytic", "baseline"):
        a.plot(ks, [results["vs_k"][str(k)][name]["median"] for k in ks], marker="o", label=name,
               color=COLORS[name])
    a.set_xscale("log", base=2)
    a.set_xlabel("clients summed k (secure aggregation)")
    a.set_ylabel("best-match PSNR (dB, median)")
    a.set_title("PSNR vs k")
    a.legend()
    zs = [float(z) for z in results["vs_noise"]]
    xs = [max(z, 1e-3) for z in zs]
    for name in ("dlg-k", "ig-k", "analytic", "baseline"):
        b.plot(xs, [results["vs_noise"][str(z)][name]["median"] for z in zs], marker="o", label=name,
               color=COLORS[name])
    b.set_xscale("log")
    b.set_xlabel(f"noise multiplier z (z=0 drawn at 1e-3), C = {results['clip']:.3g}")
    b.set_ylabel("PSNR (dB, median)")
    b.set_title("PSNR vs DP noise, k = 1")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 trials per point, k <= 8")
    parser.add_argument("--trials", type=int, default=None, help="examples per point (default 5; quick 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", type=Path, default=Path("inversion_curves.png"))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    trials = args.trials or (2 if args.quick else 5)
    ks = tuple(k for k in KS if k <= 8) if args.quick else KS
    start = time.perf_counter()
    results = run(ks=ks, noises=NOISES, steps=STEPS, trials=trials, seed=args.seed)
    results["settings"] = {"trials": trials, "seed": args.seed, "quick": args.quick,
                           "seconds": time.perf_counter() - start, "command": " ".join(sys.argv)}
    plot(results, args.png)
    print(f"wrote {args.png} ({results['settings']['seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(_plain(results), indent=2, allow_nan=False))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
