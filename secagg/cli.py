"""The ``secagg`` command line: the library's composition root.

This is the one module allowed to import ``secagg``, ``dp`` and ``attacks`` together; it grows a
subcommand per capability. ``secagg train`` runs federated training on the bundled digits task.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from secagg import __version__
from secagg.aggregation import ClipNorm, SecureSum
from secagg.aggregation.secure import GRAPHS
from secagg.data.partition import KINDS as PARTITION_KINDS
from secagg.errors import SecAggError
from secagg.experiment import ExperimentConfig, config_summary, run_experiment
from secagg.layout import BUFFER_POLICIES
from secagg.models import model_names

_D = ExperimentConfig()  # defaults shown in --help come from the config classes themselves

# flag dest -> (section, field) in ExperimentConfig
_FIELDS: dict[str, tuple[str, ...]] = {
    "clients": ("task", "num_clients"),
    "model": ("task", "model"),
    "partition": ("task", "partition", "kind"),
    "alpha": ("task", "partition", "alpha"),
    "shards_per_client": ("task", "partition", "shards_per_client"),
    "rounds": ("fedavg", "rounds"),
    "fraction": ("fedavg", "fraction"),
    "local_epochs": ("fedavg", "client", "epochs"),
    "batch_size": ("fedavg", "client", "batch_size"),
    "lr": ("fedavg", "client", "lr"),
    "server_lr": ("fedavg", "server_lr"),
    "server_momentum": ("fedavg", "server_momentum"),
    "buffers": ("fedavg", "buffers"),
    "seed": ("seed",),
}


def _default(path: tuple[str, ...]) -> Any:
    value: Any = _D
    for name in path:
        value = getattr(value, name)
    return value


def _with(obj: Any, path: tuple[str, ...], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _with(getattr(obj, path[0]), path[1:], value)})


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secagg", description="Privacy-hardened federated learning.")
    parser.add_argument("--version", action="version", version=f"secagg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="federated training on the bundled digits task",
        description="FedAvg on scikit-learn's digits, split across simulated clients. Writes "
                    "results.json, results.csv, accuracy.png and a checkpoint to --out.")

    def opt(flag: str, dest: str, help_: str, **kw: Any) -> None:
        kw.setdefault("type", type(_default(_FIELDS[dest])))
        train.add_argument(flag, dest=dest, default=None,
                           help=f"{help_} (default: {_default(_FIELDS[dest])})", **kw)

    opt("--clients", "clients", "number of clients the data is split across")
    opt("--fraction", "fraction", "fraction of clients sampled each round, in (0, 1]")
    opt("--rounds", "rounds", "training rounds")
    opt("--local-epochs", "local_epochs", "local epochs per round (E)")
    opt("--batch-size", "batch_size", "local batch size (B); 0 = full batch")
    opt("--lr", "lr", "client learning rate")
    opt("--server-lr", "server_lr", "server learning rate (1 = plain FedAvg)")
    opt("--server-momentum", "server_momentum", "server momentum (FedAvgM); 0 = off")
    opt("--partition", "partition", "how data is split", choices=PARTITION_KINDS)
    opt("--alpha", "alpha", "Dirichlet concentration for --partition dirichlet (smaller = more skew)")
    opt("--shards-per-client", "shards_per_client", "label shards per client for --partition shards")
    opt("--model", "model", "model architecture", choices=model_names())
    opt("--buffers", "buffers", "BatchNorm-style buffers: aggregate with the update, or keep frozen",
        choices=BUFFER_POLICIES)
    opt("--seed", "seed", "root seed: same seed, same numbers")
    train.add_argument("--clip-norm", type=float, default=None,
                       help="clip each update to this L2 norm before averaging (default: off)")
    secure = train.add_argument_group("secure aggregation (the server sees only sums)")
    secure.add_argument("--secure", action="store_true",
                        help="aggregate with SecAgg/SecAgg+ (quantized, pairwise-masked) "
                             "instead of in the clear")
    secure.add_argument("--secure-graph", choices=GRAPHS, default="full",
                        help="full graph (Bonawitz et al.) or a SecAgg+ Harary graph (default: full)")
    secure.add_argument("--secure-clip", type=float, default=1.0,
                        help="per-coordinate quantization range of the weighted update (default: 1.0)")
    secure.add_argument("--secure-bits", type=int, default=32, help="ring Z_(2^bits) (default: 32)")
    secure.add_argument("--secure-dropout", type=float, default=0.0,
                        help="fraction of sampled clients that drop after sharing keys (simulation)")
    secure.add_argument("--secure-malicious", action="store_true",
                        help="malicious-server mode: signed keys and a consistency round "
                             "(tolerates --secure-corrupt colluding clients)")
    secure.add_argument("--secure-corrupt", type=float, default=0.05,
                        help="fraction of clients that may collude with the server (default: 0.05)")
    train.add_argument("--config", type=Path, default=None,
                       help="JSON configuration to start from (as in results.json's 'config'); "
                            "flags given on the command line override it")
    train.add_argument("--out", type=Path, default=Path("runs/train"),
                       help="output directory (default: runs/train)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run checkpointed in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The run configuration: ``--config`` (or the defaults) with the given flags applied."""
    config = (ExperimentConfig.from_json(args.config.read_text()) if args.config is not None
              else ExperimentConfig())
    for dest, path in _FIELDS.items():
        value = getattr(args, dest)
        if value is not None:
            config = _with(config, path, value)
    if args.secure:
        config = _with(config, ("fedavg", "aggregator"),
                       SecureSum(clip=args.secure_clip, bits=args.secure_bits, graph=args.secure_graph,
                                 dropout=args.secure_dropout, malicious=args.secure_malicious,
                                 corrupt_fraction=args.secure_corrupt))
    if args.clip_norm is not None:
        config = _with(config, ("fedavg", "aggregator"),
                       ClipNorm(max_norm=args.clip_norm, inner=config.fedavg.aggregator))
    return config


def _train(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from secagg.results import plot_history, summarize

    console = Console()
    config = config_from_args(args)
    console.print(f"[bold]secagg train[/] {config_summary(config)}")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                        disable=args.no_progress)
    with progress:
        bar = progress.add_task("round", total=config.fedavg.rounds)

        def on_round(row: dict[str, Any]) -> None:
            progress.update(bar, completed=row["round"],
                            description=f"round {row['round']}  acc {100 * row['accuracy']:.1f}%")

        result = run_experiment(config, args.out, resume=args.resume, on_round=on_round)

    secure = any(key.endswith("client_bytes_mean") for row in result.history for key in row)
    table = Table(title="FedAvg on digits: test metrics per round"
                  + (" (KiB: mean traffic per client)" if secure else ""))
    columns = ["round", "clients", "train loss", "test loss", "accuracy", "seconds"]
    for col in columns + (["KiB", "dropped"] if secure else []):
        table.add_column(col, justify="right")
    for row in result.history:
        loss = "aborted" if row.get("aborted") else f"{row['train_loss']:.4f}"
        cells = [str(row["round"]), str(row["clients"]), loss, f"{row['loss']:.4f}",
                 f"{100 * row['accuracy']:.2f}%", f"{row['seconds']:.2f}"]
        if secure:
            kib = next((v for k, v in row.items() if k.endswith("client_bytes_mean")), 0.0)
            dropped = next((v for k, v in row.items() if k.endswith("/dropped")), 0.0)
            cells += [f"{kib / 1024:.1f}", f"{dropped:.0f}"]
        table.add_row(*cells)
    console.print(table)
    summary = summarize(result.history)
    plot = plot_history(result.history, args.out / "accuracy.png", config_summary(config))
    console.print(f"final accuracy {100 * summary['final_accuracy']:.2f}% "
                  f"(best {100 * summary['best_accuracy']:.2f}%), "
                  f"{summary['mean_round_seconds']:.2f} s/round")
    console.print(f"wrote {args.out / 'results.json'}, {args.out / 'results.csv'}, {plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``secagg`` console script; returns the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
    except SecAggError as exc:
        print(f"secagg: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"secagg: error: {exc}", file=sys.stderr)
        return 1
    return 2

