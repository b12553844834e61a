"""Distributed-DP client cost against the cost of masking, both measured in this run.

For one client with a d-coordinate update (d = 10^6, ``--quick`` 10^5), the median over --repeats of:

* rotation: ``dp.rotation.rotate`` (zero-pad to L = next power of 2, signs, fast Walsh-Hadamard);
* rounding: conditional randomized rounding of the rotated, clipped, scaled vector (L uniforms from
  the AES-CTR CSPRNG plus the norm check);
* ddg: ``dp.noise.discrete_gaussian`` of L values at the plan's sigma_l (exact sampler);
* skellam: ``dp.noise.skellam`` of L values at the Skellam plan's mu_l;
* encode: the whole ``DistributedDP.encode_client`` (ddg);
* mask: the baseline, ``secagg.crypto.prg.accumulate_masks`` of one seed over d uint32 words, the
  work one pairwise or self mask costs a SecAgg client.

Each is printed with its ratio to ``mask``. The plan is that of ``DistributedDP(clip=1,
noise_multiplier=1, bits=20, expected_clients=--clients, min_clients=--clients)``.

    python benchmarks/distributed_dp_speed.py            # d = 10^6
    python benchmarks/distributed_dp_speed.py --quick    # d = 10^5
    python benchmarks/distributed_dp_speed.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dp.distributed import DistributedDP
from dp.noise import SecureRandom, discrete_gaussian, skellam
from dp.rotation import rotate
from secagg.crypto.prg import accumulate_masks


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(d: int, clients: int, repeats: int) -> dict[str, Any]:
    """Time every stage for one client with ``d`` coordinates; seconds and ratios to the mask."""
    ddg = DistributedDP(clip=1.0, noise_multiplier=1.0, bits=20, expected_clients=clients,
                        min_clients=clients)
    sk = DistributedDP(mechanism="skellam", clip=1.0, noise_multiplier=1.0, bits=20,
                       expected_clients=clients, min_clients=clients)
    plan, sk_plan = ddg.plan(d), sk.plan(d)
    length = plan.length
    rng = SecureRandom()
    x = rng.uniform(d) - 0.5  # the update's values do not affect the cost
    x /= np.linalg.norm(x)
    scaled = (rotate(x, 1) / plan.gamma).reshape(1, -1)
    seed = os.urandom(32)
    out = np.zeros(d, dtype=np.uint32)
    stages: dict[str, Callable[[], Any]] = {
        "mask": lambda: accumulate_masks(out, [(seed, 1)]),
        "rotation": lambda: rotate(x, 1),
        "rounding": lambda: ddg.round_scaled(scaled, rng),
        "ddg": lambda: discrete_gaussian(plan.sigma_l, length, rng),
        "skellam": lambda: skellam(sk_plan.mu_l, length, rng),
        "encode": lambda: ddg.encode_client(x, 1, rng),
    }
    seconds = {name: _median_seconds(fn, repeats) for name, fn in stages.items()}
    mask = seconds["mask"]
    return {
        "d": d, "padded_length": length, "clients": clients, "repeats": repeats,
        "sigma_l": plan.sigma_l, "mu_l": sk_plan.mu_l,
        "gamma_ddg": plan.gamma, "gamma_skellam": sk_plan.gamma,
        "seconds": seconds,
        "ratio_to_mask": {k: v / mask for k, v in seconds.items()},
        "samples_per_second": {"ddg": length / seconds["ddg"], "skellam": length / seconds["skellam"]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d = 10^5 instead of 10^6")
    parser.add_argument("--clients", type=int, default=100, help="expected = minimum clients (plan)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    res = run(10**5 if args.quick else 10**6, args.clients, args.repeats)
    print(f"d = {res['d']} (padded L = {res['padded_length']}), n = {res['clients']}, "
          f"sigma_l = {res['sigma_l']:.1f}, mu_l = {res['mu_l']:.4g}, median of {res['repeats']}")
    print(f"{'stage':<10}{'seconds':>12}{'x mask':>10}")
    for name, sec in res["seconds"].items():
        print(f"{name:<10}{sec:>12.4f}{res['ratio_to_mask'][name]:>10.1f}")
    for name, rate in res["samples_per_second"].items():
        print(f"{name} sampler: {rate / 1e6:.2f} M samples/s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
