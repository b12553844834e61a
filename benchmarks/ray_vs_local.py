"""The attack-benchmark grid on Ray against the single-process runner: wall time, and equal tables.

Runs ``run_grid`` for a preset three times into fresh directories: backend ``"local"`` with ``jobs=1``;
backend ``"ray"`` with its default ``ray_threads`` (each task uses, and reserves, as many torch
threads as this process: bit-identical rows); backend ``"ray"`` with ``ray_threads=1`` (one thread per
task, as many tasks as CPUs). Both Ray runs share one local Ray started here with ``--cpus`` CPUs; its
start-up is timed separately and counted in each Ray total. Prints the wall times and local / ray
(the speed-up), and the seconds the privacy cells took: they run in the driver under every backend.

Then it writes every run's reports and checks them against the local run's: results.csv and
privacy.csv without their ``seconds`` column, summary.md without its "N s of training in total"
line. The presets' DP defence draws reproducible simulation noise (``simulation_seed``), so every
cell is compared. Any difference exits with status 1 (expected only for the one-thread run, whose
floats may differ in the last bits).

    python benchmarks/ray_vs_local.py                     # quick preset, 2 CPUs
    python benchmarks/ray_vs_local.py --preset default --cpus 2 --json out.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from attacks.bench import load, run_grid, write_reports

TOTAL_LINE = "s of training in total"


def _csv(path: Path) -> list[dict[str, str]]:
    """The rows of a report table without the wall-time column."""
    if not path.exists():
        return []
    with path.open() as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def _summary(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if TOTAL_LINE not in line]


def compare(a: Path, b: Path) -> list[str]:
    """Names of the report files that differ between directories ``a`` and ``b`` (timing columns and
    lines left out)."""
    differ = [name for name in ("results.csv", "privacy.csv") if _csv(a / name) != _csv(b / name)]
    if _summary(a / "summary.md") != _summary(b / "summary.md"):
        differ.append("summary.md")
    return differ


def _privacy_seconds(rows: list[dict[str, Any]]) -> float:
    return sum(r["seconds"] for r in rows if r.get("section") == "privacy")


def measure(preset: str, cpus: int, out: Path) -> dict[str, Any]:
    """Run the grid locally and twice on Ray into subdirectories of ``out``; times and comparisons."""
    import ray

    config = load(None, preset)
    started = time.perf_counter()
    rows = {"local": run_grid(config, out / "local", progress=False)}
    runs: dict[str, Any] = {"local": {"wall_s": time.perf_counter() - started}}

    started = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - started
    try:
        for name, threads in (("ray", None), ("ray_1_thread", 1)):
            started = time.perf_counter()
            rows[name] = run_grid(config, out / name, progress=False, backend="ray", ray_threads=threads)
            runs[name] = {"wall_s": time.perf_counter() - started + startup}
    finally:
        ray.shutdown()

    for name, rs in rows.items():
        write_reports(out / name, config, rs)
        runs[name]["privacy_s"] = _privacy_seconds(rs)
        if name != "local":
            runs[name]["differ"] = compare(out / "local", out / name)
            runs[name]["speedup"] = runs["local"]["wall_s"] / runs[name]["wall_s"]
    return {"preset": preset, "cpus": cpus, "cells": len(rows["local"]), "ray_startup_s": startup,
            "torch_threads": _threads(), "runs": runs}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="quick", choices=("quick", "default", "full"))
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    parser.add_argument("--out", type=Path, help="keep both runs here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out if args.out is not None else Path(tmp)
        if (out / "local").exists() or (out / "ray").exists():
            parser.error(f"--out {out}: holds an earlier run (local/ or ray/); the grid would resume")
        result = measure(args.preset, args.cpus, out)
    runs = result["runs"]
    print(f"preset {result['preset']}: {result['cells']} cells; driver torch threads "
          f"{result['torch_threads']}; local Ray with {result['cpus']} CPUs, start-up "
          f"{result['ray_startup_s']:.1f} s (counted in each ray total)")
    labels = {"local": "local, jobs=1", "ray": "ray, default threads", "ray_1_thread": "ray, 1 thread/task"}
    for name, run in runs.items():
        ratio = f"  local/ray {run['speedup']:.2f}x" if "speedup" in run else ""
        print(f"{labels[name]:22s} {run['wall_s']:7.1f} s  (privacy cells in the driver "
              f"{run['privacy_s']:.1f} s){ratio}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    failed = False
    for name, run in runs.items():
        if run.get("differ"):
            print(f"FAIL: {labels[name]}: the reports differ from local: {', '.join(run['differ'])}")
            failed = True
    if failed:
        return 1
    print("tables identical (results.csv, privacy.csv without 'seconds'; summary.md without its "
          "total-time line)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
