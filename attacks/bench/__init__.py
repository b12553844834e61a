"""The attack benchmark: ``secagg bench`` runs a grid of attacks x defences and writes its reports.

See :mod:`attacks.bench.config` for the grid file format and the presets, :mod:`attacks.bench.runner`
for resumption and parallel cells, :mod:`attacks.bench.report` for the outputs.
"""

from __future__ import annotations

from pathlib import Path

from attacks.bench.config import PRESETS, BenchConfig, load
from attacks.bench.report import write_reports
from attacks.bench.runner import cells, run_grid


def run(out_dir: str | Path, *, preset: str | None = None, config_file: str | Path | None = None,
        jobs: int | None = None, progress: bool = True, backend: str = "local",
        ray_address: str | None = None, ray_threads: int | None = None) -> dict[str, Path]:
    """Run (or resume) the grid of ``config_file`` or of ``preset`` (default: ``"default"``) into
    ``out_dir`` and write its reports; returns their paths (results.json included). ``jobs`` (default:
    one process per available core), ``backend``, ``ray_address`` and ``ray_threads``: where the cells
    run, as in :func:`run_grid`."""
    config = load(config_file, None) if config_file is not None else load(None, preset or "default")
    rows = run_grid(config, out_dir, jobs=jobs, progress=progress, backend=backend, ray_address=ray_address,
                    ray_threads=ray_threads)
    paths = write_reports(out_dir, config, rows)
    return {"json": Path(out_dir) / "results.json", **paths}


__all__ = ["PRESETS", "BenchConfig", "cells", "load", "run", "run_grid", "write_reports"]
