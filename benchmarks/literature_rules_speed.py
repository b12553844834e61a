"""Speed of the defences from the poisoning literature (FLTrust, FLAME, FoolsGold, DnC, SignGuard, RLR).

Each rule aggregates the same float32 stack of n updates with d coordinates (a standard normal,
drawn from a fixed public seed; FLTrust's root update is the mean of the stack plus noise), and the
median of ``--repeats`` timed calls, after one untimed warm-up, is printed in seconds (wall clock and
process CPU time) next to the plain mean as a baseline. FoolsGold is timed in a steady state: its
warm-up call fills the history of every client, and each timed call starts from that state.

    python benchmarks/literature_rules_speed.py                 # n=100, d=10^6 (~0.4 GB stack)
    python benchmarks/literature_rules_speed.py --n 20 --d 10000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from secagg.aggregation import (
    FLAME,
    DnC,
    FLTrust,
    FoolsGold,
    Mean,
    RobustLearningRate,
    SignGuard,
    UpdateBatch,
)
from secagg.aggregation.base import Aggregator, AggState
from secagg.seeding import torch_generator


def make_batch(n: int, d: int) -> UpdateBatch:
    """A reproducible float32 (n, d) stack with a root update near its mean, and global weights (ten
    times the updates' scale) for the rules that compare the clients' models."""
    gen = torch_generator(0, "literature-bench")  # not secret: benchmark data
    updates = torch.randn(n, d, generator=gen)
    reference = updates.mean(dim=0) + 0.1 * torch.randn(d, generator=gen)
    model = 10.0 * torch.randn(d, generator=gen)
    return UpdateBatch(updates, torch.ones(n, dtype=torch.float64), tuple(range(n)), round=1, seed=1,
                       reference=reference, global_model=model)


def time_rule(rule: Aggregator, batch: UpdateBatch, repeats: int) -> tuple[float, float]:
    """Median wall-clock and process-CPU seconds of ``rule.aggregate`` over ``repeats`` calls after one
    warm-up call (whose resulting state, for a stateful rule, is the state every timed call starts
    from). CPU time sums the threads; on a shared machine it is inflated less than wall time."""
    state: AggState = rule.aggregate(batch, rule.init_state(batch.dim)).state
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        rule.aggregate(batch, state)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def rules(n: int) -> dict[str, Callable[[], Aggregator]]:
    """name -> a factory of the rule at its defaults (f = n // 10 where a rule needs it)."""
    f = max(1, n // 10)
    return {
        "mean": Mean,
        "fltrust": FLTrust,
        "flame": FLAME,
        "flame-updates": lambda: FLAME(cluster_on="updates"),
        "foolsgold": FoolsGold,
        "dnc": lambda: DnC(f=f),
        "signguard": SignGuard,
        "rlr": lambda: RobustLearningRate(theta=max(1, n // 4)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="clients (default 100)")
    parser.add_argument("--d", type=int, default=1_000_000, help="coordinates (default 10^6)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per rule (default 3)")
    args = parser.parse_args(argv)
    batch = make_batch(args.n, args.d)
    print(f"n={args.n} d={args.d} float32, torch threads={torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print(f"{'rule':14s} {'wall':>8s}   {'cpu':>8s}")
    for name, make in rules(args.n).items():
        wall, cpu = time_rule(make(), batch, args.repeats)
        print(f"{name:14s} {wall:8.3f} s {cpu:8.3f} s")


if __name__ == "__main__":
    main()
