"""The ServerApp: Flower's strategy loop with secagg's strategy (robust rule or secure aggregation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from flower_digits.task import from_run_config, task
from secagg.fedavg.server import evaluate
from secagg.integrations.flower import SecAggStrategy


def make_app(overrides: dict[str, Any] | None = None) -> ServerApp:
    """The ServerApp; ``overrides`` replace run-config values (``run_simulation`` takes no run config)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = {**context.run_config, **(overrides or {})}
        variant, config = from_run_config(settings)
        t = task(config.task.num_clients, config.seed)
        strategy = SecAggStrategy(
            config.fedavg.aggregator, fraction_train=config.fedavg.fraction,
            fraction_evaluate=float(settings.get("fraction-evaluate", 0.0)),
            min_available_nodes=int(settings.get("min-nodes", config.task.num_clients)), min_train_nodes=2,
            seed=config.seed, server_optimizer=config.fedavg.resolved_server_optimizer,
            stage_timeout=float(settings.get("stage-timeout", 60.0)))

        def central(round_index: int, arrays: ArrayRecord) -> MetricRecord:
            out = evaluate(t.model, arrays.to_torch_state_dict(), t.data.test_x, t.data.test_y)
            return MetricRecord({"accuracy": out["accuracy"], "loss": out["loss"]})

        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(t.model.state_dict()),
                                num_rounds=config.fedavg.rounds,
                                timeout=float(settings.get("timeout", 3600.0)),
                                evaluate_fn=central)
        out = settings.get("result-path", "")
        if out:  # for tests and benchmarks: what happened, as JSON
            write_result(Path(str(out)), variant, result, strategy)

    return app


def write_result(path: Path, variant: str, result, strategy: SecAggStrategy) -> None:
    final = result.arrays.to_torch_state_dict()
    path.write_text(json.dumps({
        "variant": variant,
        "weights": {k: v.double().flatten().tolist() for k, v in final.items()},
        "accuracy": {str(r): float(m["accuracy"]) for r, m in result.evaluate_metrics_serverapp.items()},
        "rounds": [{"round": h.round, "sampled": list(h.sampled), "survivors": list(h.survivors),
                    "dropped": list(h.dropped), "failed": {str(k): v for k, v in h.failed.items()},
                    "rejected": {str(k): v for k, v in h.rejected.items()}, "aborted": h.aborted,
                    "epsilon": h.epsilon, "stage_seconds": h.stage_seconds,
                    "sums": [np.asarray(s).tolist() for s in h.sums]}
                   for h in strategy.history],
    }))


app = make_app()
