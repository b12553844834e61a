"""What a federated GAN run writes besides its results: image grids and the metric curves (PNG)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from secagg.results import save_figure

#: the per-round GAN metrics the curves show, with their axis labels
CURVES = (("modes_covered", "modes covered (of K)"), ("mode_kl", "KL(labels || uniform) (nats)"),
          ("frechet", "Frechet distance (evaluator features)"))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_grid(images: torch.Tensor, path: str | Path, *, title: str = "", cols: int | None = None) -> Path:
    """``images`` ((n, 1, h, w) or (n, h, w) in [0, 1]; (n, 3, h, w) colour) tiled ``cols`` per row
    (default: a square grid), as a PNG at ``path`` (grey-scale: white ink on black, as the data is
    stored)."""
    x = images.detach().cpu().float().clamp(0, 1)
    if x.ndim == 3:
        x = x[:, None]
    n, c, h, w = x.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = torch.zeros(c, rows * (h + 1) + 1, cols * (w + 1) + 1)
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + k * (w + 1): 1 + k * (w + 1) + w] = x[i]
    plt = _pyplot()
    width = max(4.0, 0.4 * cols)
    fig, ax = plt.subplots(figsize=(width, max(1.0, width * canvas.shape[1] / canvas.shape[2]) + 0.4),
                           constrained_layout=True)
    if c == 1:
        ax.imshow(canvas[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_gan_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, *,
                    title: str = "", num_classes: int | None = None) -> Path:
    """One panel per metric of :data:`CURVES` (per round), one line per run (``runs``: label ->
    round records, as in ``results.json``), as a PNG at ``path``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.6), constrained_layout=True)
    for ax, (key, label) in zip(axes, CURVES, strict=True):
        for name, history in runs.items():
            pts = [(row["round"], row[key]) for row in history if row.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", ms=3, label=name)
        if key == "modes_covered" and num_classes is not None:
            ax.set_ylim(0, num_classes + 0.5)
        ax.set(xlabel="round", ylabel=label)
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes[0].legend(fontsize=8)
    return save_figure(fig, path, suptitle=title)
