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
from secagg.aggregation import (
    Aggregator,
    Bucketing,
    Bulyan,
    CenteredClipping,
    ClipNorm,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    Mean,
    MultiKrum,
    NearestNeighbourMixing,
    SecureBucketing,
    SecureSum,
    TrimmedMean,
)
from secagg.aggregation.secure import GRAPHS
from secagg.data.partition import KINDS as PARTITION_KINDS
from secagg.errors import ConfigError, SecAggError
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


# --aggregator NAME -> rule class; the names are the registry kinds
ROBUST_RULES: dict[str, type[Aggregator]] = {
    cls.kind: cls for cls in (Mean, CoordinateMedian, TrimmedMean, Krum, MultiKrum, Bulyan,
                              GeometricMedian, CenteredClipping)}
# the fewest updates per round each rule accepts, as a function of f, and that bound in words
_MIN_UPDATES: dict[str, tuple[Any, str]] = {
    TrimmedMean.kind: (lambda f: 2 * f + 1, "2f < n"),
    Krum.kind: (lambda f: f + 3, "n >= f + 3"),
    MultiKrum.kind: (lambda f: f + 3, "n >= f + 3"),
    Bulyan.kind: (lambda f: 4 * f + 3, "n >= 4f + 3"),
}
DEFAULT_BYZANTINE_F = 1


class FlagError(ConfigError):
    """A command-line flag (or combination of flags) that cannot work; the message names the flag."""


def _takes_f(kind: str) -> bool:
    return "f" in {f.name for f in dataclasses.fields(ROBUST_RULES[kind])}  # type: ignore[arg-type]


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
    return _build_parsers()[0]


def _build_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The ``secagg`` parser and its ``train`` subparser (for errors found after parsing)."""
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
    robust = train.add_argument_group(
        "robust aggregation (against up to f Byzantine clients per round)",
        "The rule replaces --config's aggregator. Composition: --clip-norm (outermost), then "
        "--bucketing, then --nnm, then the rule. With --secure the bucketing is secure bucketing: "
        "a SecAgg session inside each bucket, the rule across the bucket means. Other rule "
        "parameters take their defaults; set them through --config.")
    robust.add_argument("--aggregator", choices=tuple(ROBUST_RULES), default=None,
                        help="combine rule (default: --config's aggregator, else the weighted mean)")
    robust.add_argument("--byzantine-f", dest="byzantine_f", type=int, default=None, metavar="F",
                        help="f for trimmed-mean, krum, multi-krum, bulyan and --nnm "
                             f"(default: {DEFAULT_BYZANTINE_F})")
    robust.add_argument("--bucketing", type=int, default=None, metavar="S",
                        help="average random buckets of S updates before the rule (Karimireddy et al. "
                             "2022); with --secure, the size of the secure buckets (default: off; "
                             f"{SecureBucketing().bucket_size} with --secure)")
    robust.add_argument("--nnm", action="store_true",
                        help="nearest-neighbour mixing before the rule (Allouah et al. 2023)")
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
    return parser, train


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The run configuration: ``--config`` (or the defaults) with the given flags applied."""
    config = (ExperimentConfig.from_json(args.config.read_text()) if args.config is not None
              else ExperimentConfig())
    for dest, path in _FIELDS.items():
        value = getattr(args, dest)
        if value is not None:
            config = _with(config, path, value)
    secure = (SecureSum(clip=args.secure_clip, bits=args.secure_bits, graph=args.secure_graph,
                        dropout=args.secure_dropout, malicious=args.secure_malicious,
                        corrupt_fraction=args.secure_corrupt) if args.secure else None)
    if args.aggregator is not None:
        config = _with(config, ("fedavg", "aggregator"), robust_aggregator(
            args.aggregator, f=args.byzantine_f, bucketing=args.bucketing, nnm=args.nnm, secure=secure,
            clients_per_round=config.fedavg.clients_per_round(config.task.num_clients)))
    else:
        for flag, given in (("--byzantine-f", args.byzantine_f is not None),
                            ("--bucketing", args.bucketing is not None), ("--nnm", args.nnm)):
            if given:
                raise FlagError(f"{flag}: needs --aggregator (one of {', '.join(ROBUST_RULES)})")
        if secure is not None:
            config = _with(config, ("fedavg", "aggregator"), secure)
    if args.clip_norm is not None:
        config = _with(config, ("fedavg", "aggregator"),
                       ClipNorm(max_norm=args.clip_norm, inner=config.fedavg.aggregator))
    return config


def robust_aggregator(rule: str, *, f: int | None = None, bucketing: int | None = None,
                      nnm: bool = False, secure: SecureSum | None = None,
                      clients_per_round: int | None = None) -> Aggregator:
    """The aggregator the robust-aggregation flags describe, checked against the round size.

    ``Bucketing(inner=NearestNeighbourMixing(inner=rule))``, each wrapper only when asked for; with
    ``secure`` the bucketing is ``SecureBucketing`` (secure sums inside buckets, the rule across their
    means). ``clients_per_round``, when known, is checked against each rule's bound (on the number
    of bucket means when bucketing). Raises :class:`FlagError` naming the flag and the bound.
    """
    if rule not in ROBUST_RULES:
        raise FlagError(f"--aggregator: unknown rule {rule!r}; choose from {', '.join(ROBUST_RULES)}")
    uses_f = _takes_f(rule) or nnm
    if f is not None and not uses_f:
        raise FlagError(f"--byzantine-f: --aggregator {rule} takes no f (rules that do: "
                        f"{', '.join(k for k in ROBUST_RULES if _takes_f(k))}; or add --nnm)")
    f = DEFAULT_BYZANTINE_F if f is None else f
    if f < 0:
        raise FlagError(f"--byzantine-f: must be >= 0, got {f}")
    min_bucket = 2 if secure is not None else 1
    if bucketing is not None and bucketing < min_bucket:
        why = " with --secure (a one-client bucket would expose that client)" if secure is not None else ""
        raise FlagError(f"--bucketing: must be >= {min_bucket}{why}, got {bucketing}")
    size = bucketing if bucketing is not None or secure is None else SecureBucketing().bucket_size

    if clients_per_round is not None:
        n = clients_per_round
        where = f"{n} clients per round"
        if secure is not None:
            if n < 2:
                raise FlagError(f"--secure: --aggregator {rule} with --secure needs >= 2 clients per "
                                f"round (secure buckets), got {n}")
            n = -(-n // size) - (1 if n > size and n % size == 1 else 0)
            where += f" in secure buckets of {size}"
        elif size is not None:
            n = -(-n // size)
            where += f" in buckets of {size}"
        if nnm and f >= n:
            raise FlagError(f"--byzantine-f: --nnm needs f < n, got f={f} with n={n} ({where})")
        if rule in _MIN_UPDATES:
            least, bound = _MIN_UPDATES[rule]
            if n < least(f):
                raise FlagError(f"--byzantine-f: --aggregator {rule} needs {bound}, got f={f} with "
                                f"n={n} ({where}); lower --byzantine-f or raise --clients/--fraction"
                                + (" or lower --bucketing" if size is not None else ""))

    cls = ROBUST_RULES[rule]
    agg: Aggregator = cls(f=f) if _takes_f(rule) else cls()  # type: ignore[call-arg]
    if nnm:
        agg = NearestNeighbourMixing(f=f, inner=agg)
    if secure is not None:
        assert size is not None
        agg = SecureBucketing(bucket_size=size, inner=agg, secure=secure)
    elif size is not None:
        agg = Bucketing(bucket_size=size, inner=agg)
    return agg


def _train(args: argparse.Namespace, config: ExperimentConfig) -> int:
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
    parser, train = _build_parsers()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            try:
                config = config_from_args(args)
            except FlagError as exc:
                train.error(str(exc))  # usage line + "secagg train: error: ...", exit status 2
            return _train(args, config)
    except SecAggError as exc:
        print(f"secagg: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"secagg: error: {exc}", file=sys.stderr)
        return 1
    return 2

