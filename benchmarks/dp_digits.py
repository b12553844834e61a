"""Differential privacy on digits: accuracy against epsilon for every DP mechanism of ``dp``.

Setting: digits, ``--clients`` (100) IID clients, ``--per-round`` (10) of them per round, ``--rounds``
(R = 40) rounds, delta = 1e-5, local training as ``ClientConfig()`` (E=5, B=10, lr=0.1), seed 0. Each
mechanism is built as ``python -m secagg --dp ...`` builds it (:mod:`secagg.cli`), so the figures are
those of what users run:

* ``central``: :class:`dp.DPFedAvg` over ``Mean(weighted=False)``, Poisson client sampling at
  q = per_round / clients, accounted with amplification (``sampling="poisson"``, RDP); z from
  :func:`dp.noise_multiplier_for`. Client-level epsilon.
* ``ddg`` / ``skellam``: :class:`dp.DistributedDP` (secure aggregation, 20-bit ring), a fixed
  ``per_round`` clients per round and no amplification, as its planner requires. Client-level epsilon.
* ``dpsgd``: :class:`dp.DPSGDTrainer` (record-level, Opacus, RDP) with plain FedAvg, fixed
  ``per_round`` clients per round. The epsilon is that of the most exposed client under the run's
  (public, seeded) client schedule, exactly what the trainer reports in the history.
* ``local``: :class:`dp.LocalDP` over the weighted mean, fixed ``per_round`` per round; per-client
  epsilon of a client present in every round (worst case, no amplification): the price of trusting
  nobody.

For every mechanism but ``central`` the noise multiplier z comes from :func:`solve_noise`, a bisection
on the mechanism's own ``epsilon_after`` after R rounds. Every DP run also gets ``target_epsilon`` (the
budget stops it before exceeding the target); ``rounds`` in the table says how far it got.

Clip norms. ``CLIP = 0.5`` (client update, L2) for central, distributed and local DP: the median L2
norm of a client's update in a plain run of this setting is 0.54 at round 1 and 0.31 at round 40 (20
clients sampled at each end, seed 0), so 0.5 clips little early on and does not inflate the noise much
later. ``MAX_GRAD_NORM = 1.0`` (per example) for DP-SGD, the library's default ``--clip``.

Also reported: the accountant's time per round (one ``epsilon_after`` after R rounds, the call the
server makes each round; median of ``--repeats``) for central RDP, DDG, Skellam and DP-SGD, and the
per-client cost of distributed DP at d = 10^6 from :mod:`benchmarks.distributed_dp_speed`
(``--no-encode`` or ``--quick`` skip it and print the command instead).

Torch runs on one thread (``torch.set_num_threads(1)``): the model is a 4810-parameter MLP, and on a
loaded machine several threads per tiny matmul are slower by an order of magnitude.

    python benchmarks/dp_digits.py                       # R = 40, eps 1, 4, 8 (a few minutes)
    python benchmarks/dp_digits.py --quick               # 30 clients, 5 per round, 10 rounds, eps 1, 8
    python benchmarks/dp_digits.py --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dp import DistributedDP, DPFedAvg, DPSGDTrainer, LocalDP, noise_multiplier_for
from secagg.aggregation import Aggregator, Mean
from secagg.data.partition import PartitionConfig
from secagg.errors import ConfigError
from secagg.experiment import ExperimentConfig, run_experiment
from secagg.fedavg import ClientConfig, FedAvg, FedAvgConfig
from secagg.fedavg.trainer import ClientTrainer, SGDTrainer
from secagg.task import TaskConfig, build_task

DELTA = 1e-5
CLIP = 0.5
MAX_GRAD_NORM = 1.0
MECHANISMS = ("central", "ddg", "skellam", "dpsgd", "local")
SPEED_COMMAND = "python benchmarks/distributed_dp_speed.py --clients {n}"


def solve_noise(epsilon_of: Callable[[float], float], target: float, *, rel_tol: float = 1e-3,
                z_max: float = 1e6) -> float:
    """Smallest z (to ``rel_tol`` relative) with ``epsilon_of(z) <= target``, for ``epsilon_of``
    non-increasing in z. Returns the upper end of the bisection, so the target always holds.
    Raises :class:`ConfigError` if no z <= ``z_max`` reaches it."""
    lo, hi = 0.0, 1.0
    while epsilon_of(hi) > target:
        lo, hi = hi, 2.0 * hi
        if hi > z_max:
            raise ConfigError(f"target_epsilon: {target} unreachable with z <= {z_max:g}")
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        if epsilon_of(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Setting:
    """The task, the two FedAvg samplers and what the accountants need (dim, schedule, examples)."""

    def __init__(self, clients: int, per_round: int, rounds: int, seed: int) -> None:
        self.clients, self.per_round, self.rounds, self.seed = clients, per_round, rounds, seed
        self.q = per_round / clients
        self.task = TaskConfig(num_clients=clients, partition=PartitionConfig(kind="iid"))
        self.client = ClientConfig()
        self.fixed = FedAvgConfig(rounds=rounds, fraction=self.q, client=self.client)
        if self.fixed.clients_per_round(clients) != per_round:
            raise ConfigError(f"--per-round: {per_round} of {clients} is not a whole fraction")
        built = build_task(self.task, seed=seed)
        server = FedAvg(self.fixed, built.model, built.data, seed=seed)
        self.dim = server.layout.dim
        self.examples = dict(server.examples)
        counts = dict.fromkeys(range(clients), 0)
        for r in range(1, rounds + 1):  # the fixed sampler's public, seeded schedule
            for c in server.sample_clients(r):
                counts[c] += 1
        self.participations = counts

    def config(self, aggregator: Aggregator | None = None, trainer: ClientTrainer | None = None,
               poisson: bool = False) -> ExperimentConfig:
        fedavg = FedAvgConfig(rounds=self.rounds, fraction=self.q, client=self.client,
                              aggregator=aggregator if aggregator is not None else Mean(),
                              trainer=trainer if trainer is not None else SGDTrainer(),
                              sampling="poisson" if poisson else "fixed")
        return ExperimentConfig(task=self.task, fedavg=fedavg, seed=self.seed)

    # ------------------------------------------------------------- mechanisms at noise multiplier z

    def central(self, z: float, target: float | None = None) -> DPFedAvg:
        return DPFedAvg(clip=CLIP, noise_multiplier=z, expected_clients=self.q * self.clients,
                        sample_rate=self.q, delta=DELTA, accountant="rdp", sampling="poisson",
                        target_epsilon=target, inner=Mean(weighted=False))

    def distributed(self, mechanism: str, z: float, target: float | None = None) -> DistributedDP:
        return DistributedDP(mechanism=mechanism, clip=CLIP, noise_multiplier=z,
                             expected_clients=self.per_round, delta=DELTA, target_epsilon=target)

    def dpsgd(self, z: float, target: float | None = None) -> DPSGDTrainer:
        return DPSGDTrainer(noise_multiplier=z, max_grad_norm=MAX_GRAD_NORM, delta=DELTA, accountant="rdp",
                            target_epsilon=target, batch_size=self.client.batch_size,
                            epochs=self.client.epochs)

    def local(self, z: float, target: float | None = None) -> LocalDP:
        return LocalDP(clip=CLIP, noise_multiplier=z, delta=DELTA, target_epsilon=target, inner=Mean())

    def epsilon(self, mechanism: str, z: float) -> float:
        """The mechanism's own epsilon after ``rounds`` rounds at noise multiplier ``z``."""
        if mechanism == "central":
            eps = self.central(z).epsilon_after(self.rounds)
        elif mechanism in ("ddg", "skellam"):
            eps = self.distributed(mechanism, z).epsilon_after(self.rounds, self.dim)
        elif mechanism == "dpsgd":
            eps = self.dpsgd(z).epsilon_after(self.participations, self.examples)
        else:
            eps = self.local(z).epsilon_after(self.rounds, self.dim)
        assert eps is not None
        return float(eps)

    def noise_for(self, mechanism: str, target: float) -> float:
        if mechanism == "central":  # what `--dp central --target-epsilon` solves
            return noise_multiplier_for(target, DELTA, self.q, self.rounds, "rdp", "poisson")
        with warnings.catch_warnings():  # probes at tiny z hit the largest RDP order: harmless there
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return solve_noise(lambda z: self.epsilon(mechanism, z), target)

    def experiment(self, mechanism: str, z: float, target: float) -> ExperimentConfig:
        if mechanism == "central":
            return self.config(aggregator=self.central(z, target), poisson=True)
        if mechanism in ("ddg", "skellam"):
            return self.config(aggregator=self.distributed(mechanism, z, target))
        if mechanism == "dpsgd":
            return self.config(trainer=self.dpsgd(z, target))
        return self.config(aggregator=self.local(z, target))


def train(config: ExperimentConfig) -> dict[str, Any]:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Opacus's notices about secure RNG / hooks
        result = run_experiment(config)
    seconds = time.perf_counter() - start
    last = result.history[-1] if result.history else {}
    return {"accuracy": float(last.get("accuracy", float("nan"))), "epsilon": last.get("epsilon"),
            "rounds_done": len(result.history), "stopped": result.stopped, "seconds": seconds}


def accountant_seconds(setting: Setting, repeats: int) -> dict[str, float]:
    """Seconds of one ``epsilon_after`` after R rounds (what the server pays once per round)."""
    z = 1.0
    central = setting.central(z)
    ddg, sk = setting.distributed("ddg", z), setting.distributed("skellam", z)
    dpsgd = setting.dpsgd(z)
    calls: dict[str, Callable[[], Any]] = {
        "central (RDP, Poisson)": lambda: central.epsilon_after(setting.rounds),
        "ddg": lambda: ddg.epsilon_after(setting.rounds, setting.dim),
        "skellam": lambda: sk.epsilon_after(setting.rounds, setting.dim),
        "dpsgd (RDP, per client)": lambda: dpsgd.epsilon_after(setting.participations, setting.examples),
        "local (RDP)": lambda: setting.local(z).epsilon_after(setting.rounds, setting.dim),
    }
    return {name: _median_seconds(fn, repeats) for name, fn in calls.items()}


def encode_cost(clients: int, repeats: int) -> dict[str, Any]:
    """``benchmarks/distributed_dp_speed.py``'s ``run(10**6, clients, repeats)``."""
    path = Path(__file__).resolve().parent / "distributed_dp_speed.py"
    spec = importlib.util.spec_from_file_location("distributed_dp_speed", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run(10**6, clients, repeats)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="30 clients, 5 per round, 10 rounds, epsilon 1 and 8, no encode timing")
    parser.add_argument("--clients", type=int, default=None, help="default 100 (--quick: 30)")
    parser.add_argument("--per-round", dest="per_round", type=int, default=None,
                        help="clients per round, expected for central DP (default 10; --quick: 5)")
    parser.add_argument("--rounds", type=int, default=None, help="default 40 (--quick: 10)")
    parser.add_argument("--epsilons", type=float, nargs="+", default=None,
                        help="target epsilons (default 1 4 8; --quick: 1 8)")
    parser.add_argument("--mechanisms", nargs="+", choices=MECHANISMS, default=list(MECHANISMS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the timings (median)")
    parser.add_argument("--no-encode", dest="encode", action="store_false",
                        help="skip the d = 10^6 distributed-DP encoding timing")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    quick = args.quick
    clients = args.clients or (30 if quick else 100)
    per_round = args.per_round or (5 if quick else 10)
    rounds = args.rounds or (10 if quick else 40)
    epsilons = args.epsilons or ([1.0, 8.0] if quick else [1.0, 4.0, 8.0])
    torch.set_num_threads(1)

    setting = Setting(clients, per_round, rounds, args.seed)
    print(f"DP on digits: {clients} IID clients, {per_round} per round (central: Poisson q = "
          f"{setting.q:g}), {rounds} rounds, delta {DELTA:g}, E={setting.client.epochs} "
          f"B={setting.client.batch_size} lr={setting.client.lr}, clip {CLIP} (DP-SGD: {MAX_GRAD_NORM} "
          f"per example), seed {args.seed}, d = {setting.dim}\n")
    rows: list[dict[str, Any]] = []
    base = train(setting.config())
    rows.append({"mechanism": "none", "target_epsilon": None, "noise_multiplier": None, **base})
    for mechanism in args.mechanisms:
        for target in epsilons:
            z = setting.noise_for(mechanism, target)
            out = train(setting.experiment(mechanism, z, target))
            rows.append({"mechanism": mechanism, "target_epsilon": target, "noise_multiplier": z, **out})
            print(f"  {mechanism} eps {target:g}: z {z:.4g}, accuracy {out['accuracy']:.3f} "
                  f"({out['seconds']:.1f} s)", file=sys.stderr, flush=True)

    print("| mechanism | target eps | z | achieved eps | accuracy | rounds | s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mechanism']} | {_fmt(r['target_epsilon'], 'g')} | {_fmt(r['noise_multiplier'], '.4g')} "
              f"| {_fmt(r['epsilon'], '.3f')} | {100 * r['accuracy']:.1f}% | {r['rounds_done']} "
              f"| {r['seconds']:.1f} |")
    print("\nclient-level epsilon for central, ddg, skellam; per-client (worst case) for local; "
          "record-level (most exposed client) for dpsgd")

    acct = accountant_seconds(setting, args.repeats)
    print(f"\naccountant, one epsilon_after after {rounds} rounds (the server's per-round call), "
          f"median of {args.repeats}:")
    for name, sec in acct.items():
        print(f"  {name:<26}{1000 * sec:>9.2f} ms")

    encode = None
    command = SPEED_COMMAND.format(n=per_round)
    if args.encode and not quick:
        encode = encode_cost(per_round, args.repeats)
        s = encode["seconds"]
        print(f"\ndistributed DP per client at d = 10^6 (L = {encode['padded_length']}), "
              f"n = {per_round}, median of {args.repeats} (`{command}`):")
        for name in ("encode", "rotation", "rounding", "ddg", "skellam", "mask"):
            print(f"  {name:<10}{s[name]:>9.3f} s {encode['ratio_to_mask'][name]:>8.1f}x mask")
    else:
        print(f"\ndistributed DP per-client cost at d = 10^6: `{command}`")

    if args.json:
        args.json.write_text(json.dumps({
            "clients": clients, "per_round": per_round, "rounds": rounds, "delta": DELTA, "clip": CLIP,
            "max_grad_norm": MAX_GRAD_NORM, "sample_rate": setting.q, "dim": setting.dim,
            "seed": args.seed, "rows": rows, "accountant_seconds": acct, "encode": encode,
            "encode_command": command}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
