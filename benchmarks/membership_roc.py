"""Membership inference on digits: loss threshold and LiRA against plain and DP-SGD models.

Setting: the pool is all 1797 digits (``build_task(TaskConfig(model="mlp"), seed)``'s train and test
splits together). ``--shadows`` (S) MLPs are trained, each on about half of the pool
(:func:`attacks.membership.balanced_in_mask`: every example is IN for exactly S/2 of them), centrally,
as one FedAvg round of a single client holding the model's data (:func:`attacks.membership.train_model`):
full batch (so every model has the same sampling rate, 1, and the same epsilon), ``EPOCHS`` steps,
SGD lr ``LR`` momentum 0.9 (setting ``plain-overfit``: ``OVERFIT_EPOCHS`` steps at ``OVERFIT_LR``, no DP).
Plain models use :class:`~secagg.fedavg.trainer.SGDTrainer`; DP models
use :class:`dp.DPSGDTrainer` (per-example clip ``MAX_GRAD_NORM``, RDP, delta 1e-5) with z from
:func:`dp.noise_multiplier_for` for each target epsilon; the epsilon reported is the trainer's own.

Evaluation follows Carlini et al. 2022: ``--targets`` target models, each on an independent random half
of the pool, are attacked with the same ``--shadows`` shadows (trained the same way; not leave-one-out,
which biases online LiRA when the mask is balanced, see :func:`attacks.membership.lira_scores`); the
scores of every pool example against every target are pooled into one ROC (``targets * 1797`` points,
half members). Attacks: loss threshold (Yeom et al. 2018), LiRA online and offline (global variance
below 64 shadows). Reported: AUC, TPR at 1% and 0.1% FPR, the DP bound
:func:`attacks.membership.dp_tpr_bound` at those FPRs, and :func:`attacks.membership.empirical_epsilon`
(``eps_lb``: the epsilon this attack proves, Clopper-Pearson 95%; above the claimed epsilon = a
violation; the JSON also has ``excess``, :func:`attacks.membership.dp_bound_excess`). The ROC (log-log,
with the DP bounds dashed) goes to ``--png``.

    python benchmarks/membership_roc.py --quick                # 8 shadows, 4 targets (~45 s)
    python benchmarks/membership_roc.py                        # 32 shadows, 8 targets (~2.5 min)
    python benchmarks/membership_roc.py --json out.json --png roc.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.membership import (
    auc,
    balanced_in_mask,
    dp_bound_excess,
    dp_tpr_bound,
    empirical_epsilon,
    lira_scores,
    loss_threshold_scores,
    model_confidences,
    plot_roc,
    roc_curve,
    tpr_at_fpr,
    train_model,
)
from dp import DPSGDTrainer, noise_multiplier_for
from secagg.fedavg.config import ClientConfig
from secagg.seeding import derive_seed, numpy_rng
from secagg.task import TaskConfig, build_task

DELTA = 1e-5
EPOCHS = 60
LR = 1.0
MAX_GRAD_NORM = 1.0
OVERFIT_EPOCHS = 300
OVERFIT_LR = 0.5
ATTACKS = ("loss", "lira-online", "lira-offline")


def run_setting(label: str, epsilon: float | None, epochs: int, lr: float, x: torch.Tensor,
                y: torch.Tensor, shadows: int, targets: int, seed: int) -> dict[str, Any]:
    """Train the shadows and targets of one setting, attack every target, return rows and curves."""
    config = ClientConfig(epochs=epochs, batch_size=0, lr=lr, momentum=0.9)
    trainer = None
    z = None
    if epsilon is not None:
        z = noise_multiplier_for(epsilon, DELTA, 1.0, epochs, accountant="rdp")
        trainer = DPSGDTrainer(noise_multiplier=z, max_grad_norm=MAX_GRAD_NORM, delta=DELTA,
                               batch_size=0, epochs=epochs)
    n = len(x)
    shadow_mask = balanced_in_mask(shadows, n, seed=derive_seed(seed, "shadows"))
    target_mask = np.zeros((targets, n), dtype=bool)
    for t in range(targets):  # independent of the shadows' mask (see lira_scores)
        target_mask[t, numpy_rng(seed, "target", t).permutation(n)[: n // 2]] = True  # not secret
    mask = np.concatenate([shadow_mask, target_mask])
    start = time.perf_counter()
    confs, losses, eps_reported, accs = [], [], [], []
    for k in range(shadows + targets):
        idx = torch.from_numpy(np.flatnonzero(mask[k]))
        trained = train_model("mlp", x[idx], y[idx], num_classes=10, config=config, trainer=trainer,
                              seed=derive_seed(seed, label, k))
        confs.append(model_confidences(trained.model, x, y))
        losses.append(loss_threshold_scores(trained.model, x, y))
        eps_reported.append(trained.epsilon)
        out = torch.from_numpy(~mask[k])
        with torch.no_grad():
            accs.append(float((trained.model(x[out]).argmax(1) == y[out]).float().mean()))
    train_s = time.perf_counter() - start
    conf = np.stack(confs)
    scores: dict[str, list[np.ndarray]] = {a: [] for a in ATTACKS}
    for t in range(shadows, shadows + targets):
        scores["loss"].append(losses[t])
        scores["lira-online"].append(lira_scores(conf[t], conf[:shadows], shadow_mask, online=True))
        scores["lira-offline"].append(lira_scores(conf[t], conf[:shadows], shadow_mask, online=False))
    is_member = target_mask.reshape(-1)
    eps = max(eps_reported)
    rows, curves = [], {}
    for attack in ATTACKS:
        s = np.concatenate(scores[attack])
        row = {"setting": label, "attack": attack, "epsilon": None if math.isinf(eps) else eps,
               "noise_multiplier": z, "auc": auc(s, is_member),
               "tpr@1%": tpr_at_fpr(s, is_member, 0.01), "tpr@0.1%": tpr_at_fpr(s, is_member, 0.001)}
        if not math.isinf(eps):
            row["bound@1%"] = dp_tpr_bound(0.01, eps, DELTA)
            row["bound@0.1%"] = dp_tpr_bound(0.001, eps, DELTA)
            row["excess"] = dp_bound_excess(s, is_member, eps, DELTA)
        row["eps_lb"] = empirical_epsilon(s, is_member, DELTA)
        rows.append(row)
        fpr, tpr, _ = roc_curve(s, is_member)
        curves[f"{label} {attack}"] = (fpr, tpr)
    return {"rows": rows, "curves": curves, "epsilon": eps, "train_s": train_s,
            "test_acc": float(np.mean(accs)), "examples": int(is_member.size)}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 shadows, 4 targets per setting")
    parser.add_argument("--shadows", type=int, default=None, help="per setting (default 32; quick 8)")
    parser.add_argument("--targets", type=int, default=None, help="per setting (default 8; quick 4)")
    parser.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 4.0, 8.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", type=Path, default=Path("membership_roc.png"))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    shadows = args.shadows or (8 if args.quick else 32)
    targets = args.targets or (4 if args.quick else 8)
    if shadows < 2 or targets < 1:
        parser.error("need --shadows >= 2 and --targets >= 1")
    torch.set_num_threads(1)  # a 4810-parameter MLP: one thread is fastest on a shared machine

    data = build_task(TaskConfig(model="mlp"), seed=args.seed).data
    x = torch.cat([data.train_x, data.test_x])
    y = torch.cat([data.train_y, data.test_y])
    settings: list[tuple[str, float | None, int, float]] = [
        ("plain-overfit", None, OVERFIT_EPOCHS, OVERFIT_LR), ("plain", None, EPOCHS, LR)]
    settings += [(f"eps={e:g}", e, EPOCHS, LR) for e in sorted(args.epsilons, reverse=True)]
    results, all_rows = [], []
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    bounds: dict[str, tuple[float, float]] = {}
    colors: dict[str, str] = {}
    for label, eps, epochs, lr in settings:
        res = run_setting(label, eps, epochs, lr, x, y, shadows, targets,
                          derive_seed(args.seed, "membership-roc"))
        keep = ("epsilon", "train_s", "test_acc", "examples")
        results.append({"setting": label} | {k: res[k] for k in keep})
        all_rows += res["rows"]
        curves.update({k: v for k, v in res["curves"].items()
                       if "lira-online" in k or label == "plain-overfit"})
        color = f"C{len(results) - 1}"
        colors.update({k: color for k in res["curves"] if "lira-online" in k})
        colors.update({f"{label} loss": "0.35", f"{label} lira-offline": "C9"})
        if eps is not None:
            bounds[f"DP bound eps={res['epsilon']:.2f}"] = (res["epsilon"], DELTA)
            colors[f"DP bound eps={res['epsilon']:.2f}"] = color
        print(f"{label}: {shadows + targets} models in {res['train_s']:.1f} s, held-out accuracy "
              f"{res['test_acc']:.3f}, epsilon {res['epsilon']:.3f}", file=sys.stderr)
    cols = ["setting", "attack", "epsilon", "auc", "tpr@1%", "bound@1%", "tpr@0.1%", "bound@0.1%", "eps_lb"]
    print(" | ".join(cols))
    for row in all_rows:
        print(" | ".join(_fmt(row.get(c)) for c in cols))
    path = plot_roc(curves, args.png, bounds=bounds, colors=colors,
                    title=f"Membership inference, digits MLP ({shadows} shadows)")
    print(f"ROC: {path}")
    if args.json:
        args.json.write_text(json.dumps({
            "shadows": shadows, "targets": targets, "delta": DELTA, "epochs": EPOCHS, "lr": LR,
            "overfit_epochs": OVERFIT_EPOCHS, "overfit_lr": OVERFIT_LR,
            "max_grad_norm": MAX_GRAD_NORM, "settings": results, "rows": all_rows, "png": str(path),
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
