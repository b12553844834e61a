"""Federated GANs on digits: mode collapse under non-IID clients, and what DP and SecAgg change.

Setting (``--quick`` in brackets): digits, 10 clients, every client in every round, R = ``--rounds``
200 [40] rounds of :class:`secagg.gan.GANTrainer` (10 local steps of batch 32, Adam lr 2e-3, beta =
(0, 0.99)), plain FedAvg on the server, seed 0, the task of ``secagg train --task gan``
(:func:`secagg.gan.gan_experiment`). 200 training examples (a seeded uniform draw) are held out of
every client: the non-members of the membership attack. Runs:

* ``iid``: the clients' examples drawn uniformly (each holds every digit).
* ``non-iid``: McMahan's label shards, 2 shards per client (each holds about 2 digits).
* ``non-iid+dp``: as non-iid, through central DP-FedAvg (:class:`dp.DPFedAvg`: every client's whole
  update, discriminator and generator halves, clipped to ``--clip`` and the sum noised with z =
  ``--noise-multiplier``; no sampling amplification: every client takes part in every round). The
  client-level epsilon at delta = 1e-5 is the accountant's (RDP), as the round records report it.
* ``non-iid+secagg``: as non-iid, through secure aggregation (:class:`SecureSum`, 32-bit ring, value
  range 1, what ``--secure`` builds): the server sees only the sum.
* ``iid/global-d``: as iid, with ``generator_target="global"`` (the generator trains against the
  round's global discriminator, frozen, so its half never depends on client data): the variant the
  trainer keeps for that property; see its docstring for why it is not the default.

Metrics (:mod:`secagg.gan.metrics`, on 1,000 generated samples from a fixed latent batch, through an
evaluator classifier trained on the held-out split): modes covered (classes with at least 1/(2K) of
the samples), KL(label histogram || uniform) in nats, and the Frechet distance to the held-out real
digits in the evaluator's feature space. GAN curves are noisy from round to round, so the table gives
the final round and the mean over the last 10 rounds. GAN-Leaks (:mod:`attacks.gan_leaks`, the full
black-box attack with k = ``--k`` 10,000 [2,000] generated samples) against each run's final
generator: ROC AUC and TPR at 1% and 10% FPR, members = 200 clients' training examples (a seeded draw),
non-members = the 200 held-out ones. ``--seeds N`` repeats everything for seeds ``--seed`` ..
``--seed + N - 1`` (the split, the reserve, the partition, the initial pair, the DP noise) and the
table gives mean +- sd over seeds: GAN training is chaotic (two runs that differ by the secure sum's
rounding, ~1e-9 per coordinate, already differ visibly after 5 rounds), so one seed says little.

Writes ``--out`` (runs/fedgan): one run folder per configuration (results.json, image grids,
gan_metrics.png), ``curves.png`` (every run's per-round curves), ``grids.png`` (every run's final
samples side by side) and ``summary.json``; prints a markdown table. Torch runs on one thread.

    python benchmarks/fedgan_digits.py --seeds 3        # the README's table (~25 minutes, one core)
    python benchmarks/fedgan_digits.py                  # 200 rounds, 5 runs, one seed (~8 minutes)
    python benchmarks/fedgan_digits.py --quick          # 40 rounds (about a minute)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.gan_leaks import gan_leaks
from dp.central import DPFedAvg
from secagg.aggregation import Aggregator, Mean, SecureSum
from secagg.data.federated import FederatedDataset
from secagg.data.partition import PartitionConfig
from secagg.experiment import ExperimentConfig, run_experiment
from secagg.gan import GANTrainer, gan_experiment, gan_task_with_reserve
from secagg.gan.report import plot_gan_curves, save_grid
from secagg.seeding import numpy_rng

CLIENTS = 10
RESERVE = 200
DELTA = 1e-5
LAST = 10  # rounds averaged in the "last-10" columns


def configs(rounds: int, z: float, clip: float, seed: int) -> dict[str, ExperimentConfig]:
    """The benchmark's runs, by name (see the module docstring)."""
    iid = gan_experiment(rounds=rounds, num_clients=CLIENTS, seed=seed)
    shards = gan_experiment(rounds=rounds, num_clients=CLIENTS, seed=seed,
                            partition=PartitionConfig(kind="shards", shards_per_client=2))

    def with_agg(config: ExperimentConfig, agg: Aggregator) -> ExperimentConfig:
        return dataclasses.replace(config, fedavg=dataclasses.replace(config.fedavg, aggregator=agg))

    # what `secagg train --dp central --noise-multiplier z --clip c` builds for a fixed round size,
    # with reproducible (simulation-only) noise so the table can be rerun
    dp = DPFedAvg(clip=clip, noise_multiplier=z, expected_clients=float(CLIENTS), sample_rate=1.0,
                  delta=DELTA, sampling="none", inner=Mean(weighted=False), simulation_seed=seed)
    global_d = dataclasses.replace(iid, fedavg=dataclasses.replace(
        iid.fedavg, trainer=dataclasses.replace(iid.fedavg.trainer, generator_target="global")))
    assert isinstance(global_d.fedavg.trainer, GANTrainer)
    return {"iid": iid, "non-iid": shards, "non-iid+dp": with_agg(shards, dp),
            "non-iid+secagg": with_agg(shards, SecureSum(value_range=1.0, bits=32)),
            "iid/global-d": global_d}


def members_of(data: FederatedDataset, count: int, seed: int) -> torch.Tensor:
    """``count`` training examples held by clients (a seeded uniform draw, without replacement)."""
    rows = np.concatenate(data.partition)
    chosen = numpy_rng(seed, "gan-leaks-members").choice(rows.size, size=count, replace=False)
    return data.train_x[torch.from_numpy(rows[chosen])]


def run(name: str, config: ExperimentConfig, out: Path, k: int) -> dict[str, Any]:
    gan = gan_task_with_reserve(config.task, config.seed, reserve=RESERVE)
    started = time.perf_counter()
    result = run_experiment(config, out / name, task_factory=lambda c, s: gan.task)
    seconds = time.perf_counter() - started
    history = result.history
    tail = history[-LAST:]
    pair = gan.task.model
    pair.load_state_dict(result.state.model)
    members = members_of(gan.task.data, RESERVE, config.seed)
    leak = gan_leaks(pair.generator, pair.latent_dim, members, gan.reserve.x, k=k, seed=config.seed)
    final = history[-1]
    return {
        "name": name, "rounds": len(history), "seconds": seconds,
        "final": {key: final[key] for key in ("modes_covered", "mode_kl", "frechet")},
        "last10": {key: statistics.fmean(row[key] for row in tail)
                   for key in ("modes_covered", "mode_kl", "frechet")},
        "epsilon": final.get("epsilon"),
        "evaluator_train_accuracy": final["evaluator_train_accuracy"],
        "gan_leaks": {"auc": leak.auc, "tpr_at_1pct": leak.tpr_at[0.01], "tpr_at_10pct": leak.tpr_at[0.1],
                      "k": leak.k, "members": leak.members, "non_members": leak.non_members},
        "history": history,
        "final_samples": pair.evaluation.generate(pair, result.state.model, pair.evaluation.grid_latents),
    }


METRICS = ("modes_covered", "mode_kl", "frechet")
LEAKS = ("auc", "tpr_at_1pct", "tpr_at_10pct")


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's seeds: mean and sample standard deviation (0 for one seed) of each figure."""
    def stats(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}

    return {"name": runs[0]["name"], "seeds": len(runs), "epsilon": runs[0]["epsilon"],
            "seconds": statistics.fmean(r["seconds"] for r in runs),
            "last10": {m: stats([r["last10"][m] for r in runs]) for m in METRICS},
            "final": {m: stats([r["final"][m] for r in runs]) for m in METRICS},
            "gan_leaks": {m: stats([r["gan_leaks"][m] for r in runs]) for m in LEAKS}}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per configuration, the mean over seeds (+- sd with several) of the last-10-round means
    and of the final round's values, GAN-Leaks against the final generator, epsilon, seconds per run."""
    def cell(s: dict[str, float], fmt: str) -> str:
        return format(s["mean"], fmt) + (f" ± {format(s['sd'], fmt)}" if s["sd"] else "")

    lines = ["| run | modes covered, last 10 (final) | mode KL, nats, last 10 (final) | Frechet, last 10 "
             "(final) | epsilon | GAN-Leaks AUC | TPR @ 1% FPR | TPR @ 10% FPR | s/run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, f, g = r["last10"], r["final"], r["gan_leaks"]
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.4g}"
        lines.append(f"| {r['name']} | {cell(t['modes_covered'], '.1f')} "
                     f"({f['modes_covered']['mean']:.1f}) | "
                     f"{cell(t['mode_kl'], '.3f')} ({f['mode_kl']['mean']:.3f}) | "
                     f"{cell(t['frechet'], '.1f')} ({f['frechet']['mean']:.1f}) | {eps} | "
                     f"{cell(g['auc'], '.3f')} | {cell(g['tpr_at_1pct'], '.3f')} | "
                     f"{cell(g['tpr_at_10pct'], '.3f')} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 rounds, k = 2,000")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per run (default: 200; quick: 40)")
    parser.add_argument("--noise-multiplier", type=float, default=1.0,
                        help="z of the DP run (default: 1.0)")
    parser.add_argument("--clip", type=float, default=1.0, help="L2 clip of the DP run (default: 1.0)")
    parser.add_argument("--k", type=int, default=None, help="GAN-Leaks samples (default: 10000; quick: 2000)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these configurations")
    parser.add_argument("--seed", type=int, default=0, help="the first seed (default: 0)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per configuration (default: 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/fedgan"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # 52k-parameter MLPs: one thread is fastest on a shared machine
    # opacus's RDP notes that the smallest order was optimal: true of a vacuous epsilon, and harmless
    warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
    rounds = args.rounds or (40 if args.quick else 200)
    k = args.k or (2000 if args.quick else 10_000)
    seeds = list(range(args.seed, args.seed + args.seeds))
    names = list(configs(rounds, args.noise_multiplier, args.clip, seeds[0]))
    if args.only:
        unknown = set(args.only) - set(names)
        if unknown:
            parser.error(f"--only: unknown {sorted(unknown)}; known: {', '.join(names)}")
        names = [n for n in names if n in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    per_seed: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for seed in seeds:
        todo = configs(rounds, args.noise_multiplier, args.clip, seed)
        for name in names:
            row = run(name, todo[name], args.out / f"seed{seed}", k)
            print(f"seed {seed} {name}: last {LAST} {row['last10']}, final {row['final']}, GAN-Leaks AUC "
                  f"{row['gan_leaks']['auc']:.3f}, {row['seconds']:.0f} s", flush=True)
            per_seed[name].append(row)
    rows = [combine(per_seed[n]) for n in names]
    print()
    first = [per_seed[n][0] for n in names]
    accuracy = ", ".join(f"{100 * per_seed[names[0]][i]['evaluator_train_accuracy']:.1f}%"
                         for i in range(len(seeds)))
    print(f"digits, {CLIENTS} clients, {rounds} rounds, seeds {seeds}; DP: z = {args.noise_multiplier}, "
          f"clip {args.clip}, delta {DELTA:g}; GAN-Leaks k = {k}; evaluator accuracy on the training "
          f"split {accuracy}")
    print(table(rows))
    plot_gan_curves({r["name"]: r["history"] for r in first}, args.out / "curves.png",
                    title=f"federated GAN on digits, {CLIENTS} clients, seed {seeds[0]}", num_classes=10)
    grid = torch.cat([r["final_samples"][:30] for r in first])
    save_grid(grid, args.out / "grids.png", cols=30,
              title="final samples (fixed latents), one row per run, top to bottom: " + ", ".join(names)
              + f" (seed {seeds[0]})")
    summary = {"rounds": rounds, "clients": CLIENTS, "noise_multiplier": args.noise_multiplier,
               "clip": args.clip, "delta": DELTA, "seeds": seeds, "k": k, "configurations": rows,
               "runs": [{k_: v for k_, v in r.items() if k_ not in ("history", "final_samples")}
                        | {"seed": seeds[i]} for n in names for i, r in enumerate(per_seed[n])]}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out / 'curves.png'}, {args.out / 'grids.png'}, {args.out / 'summary.json'} and a run "
          f"folder per seed and configuration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
