"""Benchmark reports: results.csv, summary.md, accuracy-over-rounds plots and the worst-case heatmap."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from attacks.bench.config import NO_ATTACK, BenchConfig

PRIVACY_COLUMNS = ("attack", "defence", "seed", "epsilon", "psnr", "ssim", "label_accuracy",
                   "fraction_recovered", "auc", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr", "seconds")
CSV_COLUMNS = ("attack", "defence", "attackers", "partition", "seed", "accuracy", "best_accuracy",
               "attack_success", "attack_success_at_stop", "attack_success_final", "durability", "epsilon",
               "rounds", "stopped", "seconds", "threat_model")


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _rounds(value: float | None) -> str:
    """A mean round count (over seeds) for the durability table."""
    return "-" if value is None else f"{value:g} round(s)"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...] = CSV_COLUMNS) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for r in rows:
            writer.writerow(["" if r.get(c) is None else r.get(c) for c in columns])


def threat_models(config: BenchConfig) -> dict[str, str]:
    """Defence name -> the threat model its secure bucketing assumes (only defences that have one)."""
    out = {name: config.threat_model(name) for name, _ in config.defences}
    return {name: tm for name, tm in out.items() if tm is not None}


def threat_markdown(config: BenchConfig) -> list[str]:
    """What the secure-bucketing cells assume about collusion with the server (empty without them)."""
    notes = [config.threat_note(name) for name in threat_models(config)]
    if not notes:
        return []
    return ["Secure bucketing hides a client's update from the server only while another honest client "
            "shares its bucket (a bucket of s clients tolerates s - 2 clients colluding with the server). "
            "Threat models of these cells:", "", *[f"- {n}" for n in notes], ""]


def split(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(poisoning rows, privacy rows); the centralized baselines are in neither (:func:`baselines`)."""
    return ([r for r in rows if r.get("section") not in ("privacy", "baseline")],
            [r for r in rows if r.get("section") == "privacy"])


def baselines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The centralized-training baseline rows (one per seed)."""
    return [r for r in rows if r.get("section") == "baseline"]


def fidelity_markdown(rows: list[dict[str, Any]], central: list[dict[str, Any]]) -> list[str]:
    """How close clean FedAvg (the mean, no attackers) comes to centralized training of the same model
    on the same examples: the reference an attack's damage is read against."""
    if not central:
        return []
    target = _mean([float(r["accuracy"]) for r in central])
    lines = ["## Fidelity: clean FedAvg against centralized training", "",
             f"Centralized training of the same model on the pooled training data ({central[0]['epochs']} "
             f"epochs, {central[0]['examples']} examples): accuracy {target:.3f} (mean over "
             f"{len(central)} seed(s)).", ""]
    clean = [r for r in rows
             if r["attack"] == "none" and r["defence"] == "mean" and r.get("accuracy") is not None]
    if clean:
        lines += ["| partition | clean FedAvg (mean) | gap to centralized (points) |", "|---|---|---|"]
        for partition in dict.fromkeys(r["partition"] for r in clean):
            acc = _mean([float(r["accuracy"]) for r in clean if r["partition"] == partition])
            lines.append(f"| {partition} | {acc:.3f} | {100 * (target - acc):+.1f} |")
        lines.append("")
    return lines


def privacy_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The privacy section of the summary: one line per (attack, defence), means over seeds."""
    if not rows:
        return []
    lines = ["## Privacy: what updates and models leak", "",
             "Reconstruction: PSNR (dB) / SSIM of the best-matching true image and iDLG label accuracy; "
             "for a malicious model (imprint, trap weights) the fraction of the round's examples "
             "recovered at >= 20 dB. Membership: AUC and TPR at 1% / 0.1% FPR. Epsilon at delta 1e-5 "
             "where DP is on.", "",
             "| attack | defence | epsilon | psnr | ssim | label acc. | recovered | auc | tpr@1% "
             "| tpr@0.1% |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["attack"], r["defence"])].append(r)
    for (attack, defence), rs in groups.items():
        def mean(key: str, rs: list[dict[str, Any]] = rs) -> float | None:
            vals = [float(r[key]) for r in rs if r.get(key) is not None]
            return _mean(vals) if vals else None
        cols = ["epsilon", "psnr", "ssim", "label_accuracy", "fraction_recovered", "auc", "tpr_at_1pct_fpr",
                "tpr_at_0_1pct_fpr"]
        lines.append(f"| {attack} | {defence} | " + " | ".join(_fmt(mean(c)) for c in cols) + " |")
    return [*lines, ""]


def _privacy_label(r: dict[str, Any]) -> str:
    """``attack vs defence`` plus what sets the cell apart (clients summed, noise, epsilon)."""
    extra = [f"{k} {r[k]:g}" for k in ("clients", "noise_multiplier") if r.get(k) is not None]
    if r.get("epsilon") is not None:
        extra.append(f"eps {r['epsilon']:.3g}")
    return f"{r['attack']} vs {r['defence']}" + (f" ({', '.join(extra)})" if extra else "")


def plot_privacy(out: Path, rows: list[dict[str, Any]]) -> Path:
    """``privacy.png``: reconstruction PSNR per cell as horizontal bars (one labelled row per cell, so
    labels never overlap) and, where the rows carry ROC points, membership inference as log-log ROC
    curves (Carlini et al. 2022) with each DP cell's bound ``TPR <= e^eps FPR + delta`` dashed in the
    same colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attacks.membership import dp_tpr_bound

    recon = [r for r in rows if r.get("psnr") is not None]
    member = [r for r in rows if r.get("roc_fpr") and r.get("roc_tpr")]
    panels = [p for p, rs in (("recon", recon), ("member", member)) if rs] or ["recon"]
    height = max(3.8, 0.32 * len(recon) + 1.2)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), height), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "recon":
            pos = np.arange(len(recon))[::-1]
            ax.barh(pos, [min(r["psnr"], 150.0) for r in recon], color="tab:red")
            ax.set_yticks(pos, [_privacy_label(r) for r in recon], fontsize=7)
            ax.axvline(20.0, color="grey", linewidth=0.8, linestyle="--")
            ax.set(xlabel="PSNR of the best-matching true image (dB, capped at 150; 20 dB dashed)",
                   title="reconstruction from what the server sees")
            continue
        grid = np.logspace(-3, 0, 200)
        ax.plot(grid, grid, color="0.6", lw=1, ls=":", label="chance")
        for k, r in enumerate(member):
            color = f"C{k % 10}"
            fpr, tpr = np.asarray(r["roc_fpr"], float), np.asarray(r["roc_tpr"], float)
            ax.plot(np.maximum(fpr, 5e-4), np.maximum(tpr, 5e-4), color=color, lw=1.5,
                    label=f"{_privacy_label(r)}: AUC {r['auc']:.2f}")
            if r.get("epsilon") is not None:
                eps, delta = float(r["epsilon"]), float(r.get("delta") or 1e-5)
                bound = [dp_tpr_bound(float(g), eps, delta) for g in grid]
                ax.plot(grid, bound, color=color, lw=1, ls="--")
        ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), xlabel="false positive rate",
               ylabel="true positive rate", title="membership inference (dashed: the DP bound)")
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path = out / "privacy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(rows: list[dict[str, Any]], partition: str, metric: str = "accuracy",
          attackers: float | None = None) -> tuple[list[str], list[str], dict[tuple[str, str], float]]:
    """(defences, attacks, mean over seeds) for one partition; attacked cells at ``attackers``
    (default: the largest fraction in the rows), the no-attack baseline whatever its fraction."""
    mine = [r for r in rows if r["partition"] == partition]
    fractions = sorted({r["attackers"] for r in mine if r["attack"] != NO_ATTACK})
    level = attackers if attackers is not None else (fractions[-1] if fractions else 0.0)
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in mine:
        if (r["attack"] == NO_ATTACK or r["attackers"] == level) and r.get(metric) is not None:
            cells[(r["defence"], r["attack"])].append(float(r[metric]))
    defences = list(dict.fromkeys(r["defence"] for r in mine))
    attacks = list(dict.fromkeys(r["attack"] for r in mine))
    return defences, attacks, {k: _mean(v) for k, v in cells.items()}


def worst_case(rows: list[dict[str, Any]], partitions: list[str]
               ) -> tuple[list[str], dict[tuple[str, str], float]]:
    """Per defence and partition, the mean (over seeds) accuracy under the strongest attack."""
    out: dict[tuple[str, str], float] = {}
    defences: list[str] = []
    for p in partitions:
        ds, attacks, means = table(rows, p)
        defences = defences or ds
        for d in ds:
            attacked = [means[(d, a)] for a in attacks if a != NO_ATTACK and (d, a) in means]
            if attacked:
                out[(d, p)] = min(attacked)
    return defences, out


def summary_markdown(config: BenchConfig, rows: list[dict[str, Any]]) -> str:
    partitions = list(dict.fromkeys(r["partition"] for r in rows))
    lines = [f"# Attack benchmark: preset `{config.name}`", "",
             f"{config.clients} clients (all in every round), {config.rounds} rounds, "
             f"model `{config.model}`, "
             f"{config.local_epochs} local epoch(s), seeds {list(config.seeds)}, attacker fractions "
             f"{list(config.attackers)}. Final test accuracy, mean over seeds.", "", *threat_markdown(config)]
    models = threat_models(config)

    def label(defence: str) -> str:  # a secure-bucketing row names its threat model where its numbers are
        return f"{defence} ({models[defence]})" if defence in models else defence

    for p in partitions:
        defences, attacks, means = table(rows, p)
        lines += [f"## Partition `{p}`", "", "| defence | " + " | ".join(attacks) + " | worst |",
                  "|---" * (len(attacks) + 2) + "|"]
        for d in defences:
            vals = [means.get((d, a)) for a in attacks]
            attacked = [v for a, v in zip(attacks, vals, strict=True) if a != NO_ATTACK and v is not None]
            worst = min(attacked) if attacked else None
            lines.append(f"| {label(d)} | " + " | ".join(_fmt(v) for v in vals) + f" | {_fmt(worst)} |")
        _, backdoors, asr = table(rows, p, metric="attack_success")
        backdoors = [a for a in backdoors if any(k[1] == a for k in asr)]
        if backdoors:
            lines += ["", "Backdoor attack success (triggered test inputs classified as the target):", "",
                      "| defence | " + " | ".join(backdoors) + " |", "|---" * (len(backdoors) + 1) + "|"]
            lines += [f"| {label(d)} | " + " | ".join(_fmt(asr.get((d, a))) for a in backdoors) + " |"
                      for d in defences]
        stopping = [a for a in backdoors if any(r["attack"] == a and r.get("durability") is not None
                                                for r in rows if r["partition"] == p)]
        if stopping:
            _, _, at_stop = table(rows, p, metric="attack_success_at_stop")
            _, _, lifespan = table(rows, p, metric="durability")
            lines += ["", "Durability of the backdoors whose attackers stop (success when they stop -> at "
                      "the end; rounds after the stop with at least half the success at the stop):", "",
                      "| defence | " + " | ".join(stopping) + " |", "|---" * (len(stopping) + 1) + "|"]
            lines += [f"| {label(d)} | " + " | ".join(
                f"{_fmt(at_stop.get((d, a)))} -> {_fmt(asr.get((d, a)))}, {_rounds(lifespan.get((d, a)))}"
                for a in stopping) + " |" for d in defences]
        lines.append("")
    diverged = [r for r in rows if (r.get("stopped") or "").startswith("diverged")]
    budget = [r for r in rows if (r.get("stopped") or "").startswith("privacy budget")]
    if diverged:
        lines += [f"{len(diverged)} cell(s) diverged (NaN/Inf) and report the last finite model: "
                  + ", ".join(f"{r['attack']} vs {r['defence']} ({r['partition']})" for r in diverged), ""]
    if budget:
        lines += [f"{len(budget)} cell(s) stopped at their privacy budget.", ""]
    total = sum(r["seconds"] for r in rows)
    lines.append(f"{len(rows)} cells, {total:.0f} s of training in total.")
    return "\n".join(lines) + "\n"


def plot_curves(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """One PNG per attack: test accuracy over rounds, one line per defence, one panel per partition
    (attacked cells at the largest attacker fraction; seeds averaged)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    partitions = list(dict.fromkeys(r["partition"] for r in rows))
    paths = []
    for attack in dict.fromkeys(r["attack"] for r in rows):
        fig, axes = plt.subplots(1, len(partitions), figsize=(5 * len(partitions), 3.6), squeeze=False)
        for ax, p in zip(axes[0], partitions, strict=True):
            mine = [r for r in rows if r["attack"] == attack and r["partition"] == p]
            level = max((r["attackers"] for r in mine), default=0.0)
            for d in dict.fromkeys(r["defence"] for r in mine):
                curves = [r["curve"] for r in mine if r["defence"] == d and r["attackers"] == level]
                if curves:
                    length = min(len(c) for c in curves)
                    mean = [statistics.fmean(c[i] for c in curves) for i in range(length)]
                    ax.plot(range(1, length + 1), mean, label=d)
            ax.set(title=f"{attack}, {p}" + (f", {level:.0%} attackers" if level else ""),
                   xlabel="round", ylabel="test accuracy", ylim=(0, 1))
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"accuracy_{attack}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_heatmap(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Worst-case heatmap (as ByzFL reports it): per defence (rows) and partition (columns), the
    accuracy under the strongest attack of the grid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    partitions = list(dict.fromkeys(r["partition"] for r in rows))
    defences, worst = worst_case(rows, partitions)
    grid = [[worst.get((d, p), float("nan")) for p in partitions] for d in defences]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(partitions), 0.9 + 0.45 * len(defences)))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(partitions)), partitions)
    ax.set_yticks(range(len(defences)), defences)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, "" if value != value else f"{value:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title("accuracy under the strongest attack")
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    path = out / "worst_case_heatmap.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def audit_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The canary-audit section of the summary (``--audit-canaries``): per audited cell, the
    accountant's epsilon next to the audit's estimate, its 95% interval and lower bound."""
    audited = [r for r in rows if r.get("audit_empirical_epsilon") is not None]
    if not audited:
        return []
    lines = ["", "## Privacy audit: canary clients (Andrew et al. 2024; Steinke et al. 2023)", "",
             "| defence | partition | attack | attackers | seed | epsilon | audit epsilon | 95% CI "
             "| 95% lower bound |", "|---|---|---|---|---|---|---|---|---|"]
    for r in audited:
        ci = f"[{_fmt(r.get('audit_ci_low'))}, {_fmt(r.get('audit_ci_high'))}]"
        lines.append(f"| {r['defence']} | {r['partition']} | {r['attack']} | {_fmt(r['attackers'])} | "
                     f"{r['seed']} | {_fmt(r.get('epsilon'))} | {_fmt(r['audit_empirical_epsilon'])} | "
                     f"{ci} | {_fmt(r.get('audit_lower_bound_95'))} |")
    return [*lines, ""]


def write_reports(out_dir: str | Path, config: BenchConfig, rows: list[dict[str, Any]]) -> dict[str, Path]:
    """results.csv, summary.md and the PNG plots next to results.json; returns their paths."""
    out = Path(out_dir)
    all_rows = rows
    rows, privacy = split(rows)
    paths = {"csv": out / "results.csv", "summary": out / "summary.md"}
    models = threat_models(config)
    write_csv(paths["csv"], [{**r, "threat_model": models.get(r["defence"])} for r in rows])
    summary = summary_markdown(config, rows) if rows else f"# Attack benchmark: preset `{config.name}`\n\n"
    sections = [fidelity_markdown(rows, baselines(all_rows)), privacy_markdown(privacy), audit_markdown(rows)]
    paths["summary"].write_text(summary + "".join("\n" + "\n".join(lines) for lines in sections if lines))
    if rows:
        paths["heatmap"] = plot_heatmap(out, rows)
        for p in plot_curves(out, rows):
            paths[p.stem] = p
    if privacy:
        paths["privacy_csv"] = out / "privacy.csv"
        write_csv(paths["privacy_csv"], privacy, PRIVACY_COLUMNS)
        paths["privacy"] = plot_privacy(out, privacy)
    return paths
