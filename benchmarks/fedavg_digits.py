"""FedAvg on digits: accuracy after 30 rounds under IID and non-IID splits, time per round, memory.

Baseline in the same run: centralized SGD on the union of the clients' data with the same model,
learning rate, batch size and number of passes over the data, so the federated accuracies can be
read as a fraction of what pooling the data would give.

    python benchmarks/fedavg_digits.py              # 20 clients, 30 rounds (about a minute)
    python benchmarks/fedavg_digits.py --rounds 5   # quick look
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

from secagg.data.partition import PartitionConfig
from secagg.experiment import ExperimentConfig, run_experiment
from secagg.fedavg import ClientConfig, FedAvgConfig, evaluate
from secagg.task import TaskConfig, build_task


def centralized(config: ExperimentConfig) -> tuple[float, float]:
    """Accuracy of plain minibatch SGD on all training data, and its seconds per epoch."""
    task = build_task(config.task, seed=config.seed)
    model = copy.deepcopy(task.model)
    c = config.fedavg.client
    opt = torch.optim.SGD(model.parameters(), lr=c.lr)
    g = torch.Generator().manual_seed(config.seed)
    x, y = task.data.train_x, task.data.train_y
    epochs = config.fedavg.rounds * c.epochs
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(c.batch_size):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = (time.perf_counter() - start) / epochs
    return evaluate(model, model.state_dict(), task.data.test_x, task.data.test_y)["accuracy"], seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    splits = {
        "iid": PartitionConfig(kind="iid"),
        "dirichlet(0.1)": PartitionConfig(kind="dirichlet", alpha=0.1),
        "shards(2)": PartitionConfig(kind="shards", shards_per_client=2),
    }
    base = ExperimentConfig(task=TaskConfig(num_clients=args.clients),
                            fedavg=FedAvgConfig(rounds=args.rounds, client=ClientConfig()),
                            seed=args.seed)
    central_acc, central_epoch_s = centralized(base)
    print(f"FedAvg on digits: {args.clients} clients, {args.rounds} rounds, E={base.fedavg.client.epochs} "
          f"B={base.fedavg.client.batch_size} lr={base.fedavg.client.lr}, all clients every round")
    print(f"baseline: centralized SGD, same passes over the data: accuracy {100 * central_acc:.2f}%, "
          f"{central_epoch_s * 1000:.1f} ms/epoch")
    print(f"{'split':<16}{'final acc':>10}{'best acc':>10}{'vs central':>11}{'s/round':>9}"
          f"{'round / central epochs':>24}")
    rows = {}
    for name, part in splits.items():
        cfg = ExperimentConfig(task=TaskConfig(num_clients=args.clients, partition=part),
                               fedavg=base.fedavg, seed=args.seed)
        start = time.perf_counter()
        result = run_experiment(cfg)
        wall = time.perf_counter() - start
        acc = result.history[-1]["accuracy"]
        best = max(r["accuracy"] for r in result.history)
        per_round = wall / args.rounds
        ratio = per_round / (central_epoch_s * base.fedavg.client.epochs)
        rows[name] = {"final_accuracy": acc, "best_accuracy": best, "seconds_per_round": per_round,
                      "accuracy_vs_central": acc / central_acc, "round_vs_central_epochs": ratio}
        print(f"{name:<16}{100 * acc:>9.2f}%{100 * best:>9.2f}%{acc / central_acc:>10.3f}x"
              f"{per_round:>9.3f}{ratio:>23.2f}x")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of the whole benchmark: {peak_mb:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"central_accuracy": central_acc, "splits": rows,
                                         "peak_rss_mib": peak_mb}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
