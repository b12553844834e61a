"""What ``secagg train`` and ``secagg bench`` print and write: progress, tables, summaries."""

from __future__ import annotations

import argparse
from typing import Any

from secagg.cli.compose import _executor
from secagg.cli.options import DEFAULT_DELTA
from secagg.errors import ConfigError
from secagg.experiment import ExperimentConfig, config_summary, run_experiment
from secagg.task import load_task_factory


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

    from secagg.results import audit_entry, plot_history, summarize

    console = Console()
    console.print(f"[bold]secagg train[/] {config_summary(config)}")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                        disable=args.no_progress)
    with progress:
        bar = progress.add_task("round", total=config.fedavg.rounds)

        def on_round(row: dict[str, Any]) -> None:
            eps = row.get("epsilon")
            audit = audit_entry(row).get("empirical_epsilon")
            progress.update(bar, completed=row["round"],
                            description=f"round {row['round']}  acc {100 * row['accuracy']:.1f}%"
                                        + ("" if eps is None else f"  eps {eps:.2f}")
                                        + ("" if audit is None else f"  audit eps {audit:.2f}")
                                        + ("" if "frechet" not in row else  # a GAN's own metrics
                                           f"  modes {row['modes_covered']:.0f}  FD {row['frechet']:.1f}"))

        executor = _executor(args)
        try:
            result = run_experiment(config, args.out, resume=args.resume, on_round=on_round,
                                    executor=executor, task_factory=load_task_factory(args.task))
        finally:
            if executor is not None:
                executor.close()

    secure = any(key.endswith("client_bytes_mean") for row in result.history for key in row)
    table = Table(title=f"FedAvg on {config.task.dataset}: test metrics per round"
                  + (" (KiB: mean traffic per client)" if secure else ""))
    private = any(row.get("epsilon") is not None for row in result.history)
    audited = any(audit_entry(row) for row in result.history)
    gan = any("frechet" in row for row in result.history)  # --task gan: loss/accuracy are D's
    if gan:
        table.title += " (loss, accuracy: the discriminator's, held-out real vs generated)"
    columns = ["round", "clients", "train loss", "test loss", "accuracy", "seconds"]
    for col in (columns + (["epsilon"] if private else []) + (["audit eps"] if audited else [])
                + (["KiB", "dropped"] if secure else []) + (["modes", "mode KL", "frechet"] if gan else [])):
        table.add_column(col, justify="right")
    for row in result.history:
        loss = ("aborted" if row.get("aborted") else "skipped" if row["train_loss"] is None
                else f"{row['train_loss']:.4f}")
        cells = [str(row["round"]), str(row["clients"]), loss, f"{row['loss']:.4f}",
                 f"{100 * row['accuracy']:.2f}%", f"{row['seconds']:.2f}"]
        if private:
            cells.append("-" if row.get("epsilon") is None else f"{row['epsilon']:.3f}")
        if audited:
            cells.append(_audit_cell(audit_entry(row)))
        if secure:
            kib = next((v for k, v in row.items() if k.endswith("client_bytes_mean")), 0.0)
            dropped = next((v for k, v in row.items() if k.endswith("/dropped")), 0.0)
            cells += [f"{kib / 1024:.1f}", f"{dropped:.0f}"]
        if gan:
            cells += [f"{row['modes_covered']:.0f}", f"{row['mode_kl']:.3f}", f"{row['frechet']:.2f}"]
        table.add_row(*cells)
    console.print(table)
    if result.stopped is not None:
        console.print(f"[bold]stopped early[/]: {result.stopped}")
    if not result.history:
        console.print("no round ran")
        return 0
    summary = summarize(result.history)
    plot = plot_history(result.history, args.out / "accuracy.png", config_summary(config))
    eps = summary.get("final_epsilon")
    delta = f", delta {DEFAULT_DELTA if args.delta is None else args.delta:g}"
    console.print(f"final accuracy {100 * summary['final_accuracy']:.2f}% "
                  f"(best {100 * summary['best_accuracy']:.2f}%), "
                  f"{summary['mean_round_seconds']:.2f} s/round"
                  + ("" if eps is None else f", epsilon {eps:.3f}{delta}"))
    if "audit" in summary:
        console.print(_audit_line(summary["audit"], eps))
    if gan:
        last = result.history[-1]
        console.print(f"GAN after round {last['round']}: {last['modes_covered']:.0f} modes covered, mode KL "
                      f"{last['mode_kl']:.3f} nats, Frechet distance {last['frechet']:.2f} (evaluator "
                      f"accuracy on the training split {100 * last['evaluator_train_accuracy']:.1f}%); "
                      f"image grids and gan_metrics.png in {args.out}")
    console.print(f"wrote {args.out / 'results.json'}, {args.out / 'results.csv'}, {plot}")
    return 0


def _audit_cell(audit: dict[str, Any]) -> str:
    eps = audit.get("empirical_epsilon")
    return "-" if eps is None else f"{eps:.3f}"


def _audit_line(audit: dict[str, Any], accountant: float | None) -> str:
    """The summary line of a canary audit, next to the accountant's epsilon."""
    def num(key: str) -> str:
        value = audit.get(key)
        return "-" if value is None else f"{value:.3f}"

    line = (f"privacy audit ({audit.get('canaries', 0):.0f} canaries, {audit.get('inserted', 0):.0f} "
            f"inserted): empirical epsilon {num('empirical_epsilon')} "
            f"[95% CI {num('ci_low')}, {num('ci_high')}]")
    if audit.get("lower_bound_95") is not None:
        line += f", 95% lower bound {num('lower_bound_95')}"
    return line + ("" if accountant is None else f" (accountant: {accountant:.3f})")


def _bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from attacks.bench import load, run_grid, write_reports
    from attacks.bench.config import with_data
    from attacks.bench.runner import Audit

    if args.preset is not None and args.bench_config is not None:
        raise ConfigError("--preset, --config: give one of them")
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {args.jobs}")
    ray = bool(args.ray or args.ray_address)
    if not ray and args.ray_threads is not None:
        raise ConfigError("--ray-threads: needs --ray")
    options = dict(jobs=args.jobs, progress=not args.no_progress, backend="ray" if ray else "local",
                   ray_address=args.ray_address, ray_threads=args.ray_threads)
    audit = None
    if args.audit_canaries is None:
        if args.audit_inclusion is not None:
            raise ConfigError("--audit-inclusion: needs --audit-canaries")
    else:  # every DP defence of the grid inside a canary audit
        if args.audit_canaries < 4:
            raise ConfigError(f"--audit-canaries: must be >= 4, got {args.audit_canaries}")
        audit = Audit(args.audit_canaries, args.audit_inclusion or "half")
    grid = load(args.bench_config, None) if args.bench_config is not None else load(
        None, args.preset or "default")
    grid = with_data(grid, args.dataset, args.data)  # checks the data set's files before any cell
    rows = run_grid(grid, args.out, audit=audit, **options)
    paths = {"json": args.out / "results.json", **write_reports(args.out, grid, rows)}
    console = Console()
    console.print(paths["summary"].read_text())
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
