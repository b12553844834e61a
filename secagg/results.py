"""Writing a run's results: ``results.json``, ``results.csv`` and an accuracy/loss plot."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from secagg.experiment import ExperimentConfig


def save_figure(fig: Any, path: str | Path, *, suptitle: str = "") -> Path:
    """Write matplotlib figure ``fig`` to ``path`` as a 120-dpi PNG (with ``suptitle`` above it, if
    given), close it, and return the path: how every plot of a run folder is saved."""
    import matplotlib.pyplot as plt

    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def audit_entry(row: dict[str, Any]) -> dict[str, Any]:
    """The privacy-audit metrics of a round record (an aggregator's ``audit/<name>`` metrics, logged
    as ``agg/audit/<name>``, or ``agg/inner/.../audit/<name>`` when nested), as ``{name: value}``;
    empty without an audit (see ``dp.audit.CanaryAudit``)."""
    return {k.rsplit("audit/", 1)[1]: v for k, v in row.items()
            if k.startswith("agg/") and (k.startswith("agg/audit/") or "/audit/" in k)}


def summarize(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Final and best accuracy, total and mean round seconds, the final DP epsilon (if any) and, for
    an audited run, the last round's audit (``"audit"``: empirical epsilon, its interval, ... next
    to ``accountant_epsilon``, the final epsilon)."""
    if not history:
        return {}
    seconds = [row["seconds"] for row in history]
    epsilon = history[-1].get("epsilon")
    audited = [row for row in history if audit_entry(row)]
    audit = ({**audit_entry(audited[-1]), "round": audited[-1]["round"], "accountant_epsilon": epsilon}
             if audited else None)
    return {
        "rounds": len(history),
        "final_accuracy": history[-1]["accuracy"],
        "final_loss": history[-1]["loss"],
        "best_accuracy": max(row["accuracy"] for row in history),
        "total_seconds": sum(seconds),
        "mean_round_seconds": sum(seconds) / len(seconds),
        **({"final_epsilon": epsilon} if epsilon is not None else {}),
        **({"audit": audit} if audit is not None else {}),
    }


def write_results(out_dir: str | Path, config: ExperimentConfig,
                  history: list[dict[str, Any]], *, stopped: str | None = None,
                  data: dict[str, Any] | None = None) -> None:
    """Write ``results.json`` (config, rounds, summary, ``data``: how non-IID the federation is, when
    given, see :func:`secagg.task.heterogeneity_report`, and ``stopped``: why training ended early,
    when it did) and ``results.csv`` (one row per round)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"config": config.to_dict(), "rounds": history, "summary": summarize(history)}
    if data is not None:
        doc["data"] = data
    if stopped is not None:
        doc["stopped"] = stopped
    _atomic_write(out / "results.json", (json.dumps(doc, indent=2) + "\n").encode())
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v)
                         for k, v in row.items()})
    _atomic_write(out / "results.csv", buf.getvalue().encode())


def plot_history(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Test accuracy and loss per round, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [row["round"] for row in history]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    ax_acc.plot(rounds, [100 * row["accuracy"] for row in history], marker="o", ms=3)
    ax_acc.set(xlabel="round", ylabel="test accuracy (%)", title="accuracy")
    ax_acc.grid(alpha=0.3)
    ax_loss.plot(rounds, [row["loss"] for row in history], marker="o", ms=3, label="test")
    ax_loss.plot(rounds, [float("nan") if row["train_loss"] is None else row["train_loss"]
                          for row in history], marker=".", ms=3,
                 label="train (clients)")
    ax_loss.set(xlabel="round", ylabel="cross-entropy", title="loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    return save_figure(fig, path, suptitle=title)
