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

from dp.accounting import ACCOUNTANTS, noise_multiplier_for
from dp.adaptive import AdaptiveClipDP
from dp.audit import INCLUSION, CanaryAudit
from dp.central import DPFedAvg
from dp.distributed import MECHANISMS, DistributedDP
from dp.dpsgd import DPSGDTrainer
from dp.local import LocalDP
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
from secagg.aggregation.secure_bucketing import THREAT_MODELS
from secagg.data.partition import KINDS as PARTITION_KINDS
from secagg.errors import ConfigError, SecAggError
from secagg.experiment import ExperimentConfig, config_summary, run_experiment
from secagg.layout import BUFFER_POLICIES
from secagg.models import model_names
from secagg.task import load_task_factory
from secagg.transport.commands import (
    add_client_parser,
    add_keys_parser,
    add_serve_options,
    run_client,
    run_keys,
    run_serve,
)

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

DP_MODES = ("none", "central", "local", "adaptive", "distributed", "dpsgd")
DEFAULT_CLIP = 1.0
DEFAULT_DELTA = 1e-5
DEFAULT_SECURE_CLIP = 1.0
DEFAULT_SECURE_BITS = 32


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

    train.set_defaults(parser=train)
    _add_training_options(train)
    _add_ray_options(train, "the simulated clients of each round")
    train.add_argument("--out", type=Path, default=Path("runs/train"),
                       help="output directory (default: runs/train)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run checkpointed in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench = sub.add_parser(
        "bench", help="attack benchmark: attacks x defences x attackers x heterogeneity",
        description="Trains one FedAvg run per cell of an attack grid (bundled digits) and writes "
                    "results.csv, results.json, summary.md and PNG plots to --out. Resumes a grid "
                    "already partly in --out.")
    bench.add_argument("--preset", choices=("quick", "default", "full"), default=None,
                       help="a named grid (default: default; quick runs in minutes, used by CI)")
    bench.add_argument("--config", dest="bench_config", type=Path, default=None,
                       help="a grid file (TOML) instead of a preset")
    bench.add_argument("--out", type=Path, default=Path("runs/bench"), help="output directory")
    bench.add_argument("--jobs", type=int, default=1, help="cells run in parallel processes (default: 1)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_ray_options(bench, "the grid's cells")
    _add_audit_options(bench)
    serve = sub.add_parser(
        "serve", help="run the federated server for remote clients over gRPC",
        description="Trains like 'secagg train' (same flags), but the clients are remote processes "
                    "('secagg client') that log in with Ed25519 identities ('secagg keys'). Secure "
                    "aggregation, DP and robust rules run as configured; checkpoints after every round "
                    "(--resume continues).")
    serve.set_defaults(parser=serve)
    _add_training_options(serve)
    serve.add_argument("--out", type=Path, default=Path("runs/serve"),
                       help="output directory (default: runs/serve)")
    serve.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    add_serve_options(serve)
    add_client_parser(sub)
    add_keys_parser(sub)
    return parser, train


def _add_ray_options(p: argparse.ArgumentParser, what: str) -> None:
    group = p.add_argument_group("Ray (optional: pip install 'secagg[ray]')")
    group.add_argument("--ray", action="store_true",
                       help=f"run {what} as Ray tasks (a local Ray unless --ray-address)")
    group.add_argument("--ray-address", dest="ray_address", default=None, metavar="ADDR",
                       help="join the Ray cluster at ADDR (e.g. ray://head:10001 or auto); implies --ray")
    group.add_argument("--ray-threads", dest="ray_threads", type=int, default=None, metavar="N",
                       help="torch threads (and CPUs reserved) per Ray task (default: this process's "
                            "torch threads, which keeps results bit-identical to a run without Ray; "
                            "1 runs the most tasks at once)")


def _executor(args: argparse.Namespace) -> Any:
    """A RayExecutor when --ray/--ray-address was given, else None (the in-process loop)."""
    if not (args.ray or args.ray_address):
        if args.ray_threads is not None:
            raise ConfigError("--ray-threads: needs --ray")
        return None
    from secagg.parallel import RayExecutor

    return RayExecutor(address=args.ray_address, threads=args.ray_threads)


def _add_training_options(train: argparse.ArgumentParser) -> None:
    """The flags that set an ExperimentConfig (shared by ``train`` and ``serve``)."""
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
    robust.add_argument("--bucket-threat-model", dest="bucket_threat_model", choices=THREAT_MODELS,
                        default=None,
                        help="with --secure --aggregator: who may collude with the server. "
                             "colluding-clients (default): up to --secure-corrupt of a round's clients, so "
                             "every secure bucket needs >= floor(corrupt * n) + 2 clients (>= 3); "
                             "honest-but-curious-server: nobody colludes (the opt-in for buckets of 2)")
    robust.add_argument("--nnm", action="store_true",
                        help="nearest-neighbour mixing before the rule (Allouah et al. 2023)")
    secure = train.add_argument_group("secure aggregation (the server sees only sums)")
    secure.add_argument("--secure", action="store_true",
                        help="aggregate with SecAgg/SecAgg+ (quantized, pairwise-masked) "
                             "instead of in the clear")
    secure.add_argument("--secure-graph", choices=GRAPHS, default="full",
                        help="full graph (Bonawitz et al.) or a SecAgg+ Harary graph (default: full)")
    secure.add_argument("--secure-clip", type=float, default=None,
                        help="per-coordinate quantization range of the weighted update (default: "
                             f"{DEFAULT_SECURE_CLIP}; with --dp local, clip * (1 + 6 z))")
    secure.add_argument("--secure-bits", type=int, default=None,
                        help=f"ring Z_(2^bits) (default: {DEFAULT_SECURE_BITS}; with --dp distributed, "
                             f"{DistributedDP().bits})")
    secure.add_argument("--secure-dropout", type=float, default=0.0,
                        help="fraction of sampled clients that drop after sharing keys (simulation)")
    secure.add_argument("--secure-malicious", action="store_true",
                        help="malicious-server mode: signed keys and a consistency round "
                             "(tolerates --secure-corrupt colluding clients)")
    secure.add_argument("--secure-corrupt", type=float, default=0.05,
                        help="fraction of clients that may collude with the server (default: 0.05)")
    dpg = train.add_argument_group(
        "differential privacy",
        "central: DP-FedAvg, clip + Gaussian noise on the sum by a trusted server (with --secure the sum "
        "is a secure sum); adaptive: central with the clip tracking the median norm; local: each client "
        "noises its own update; distributed: integer noise inside secure aggregation (always secure); "
        "dpsgd: record-level DP-SGD in local training. Each round's epsilon (at --delta) is recorded.")
    dpg.add_argument("--dp", choices=DP_MODES, default="none", help="DP mechanism (default: none)")
    dpg.add_argument("--noise-multiplier", dest="noise_multiplier", type=float, default=None, metavar="Z",
                     help="noise std / clip norm (default: solved from --target-epsilon)")
    dpg.add_argument("--clip", type=float, default=None,
                     help=f"L2 clip norm per client update (dpsgd: per example; adaptive: initial) "
                          f"(default: {DEFAULT_CLIP})")
    dpg.add_argument("--delta", type=float, default=None, help=f"DP delta (default: {DEFAULT_DELTA})")
    dpg.add_argument("--target-epsilon", dest="target_epsilon", type=float, default=None, metavar="EPS",
                     help="privacy budget: training stops before a round would exceed it; without "
                          "--noise-multiplier, z is chosen to reach it after --rounds rounds")
    dpg.add_argument("--sample-rate", dest="sample_rate", type=float, default=None, metavar="Q",
                     help="Poisson client sampling: each client takes part with probability Q "
                          "(replaces --fraction; enables amplification by subsampling)")
    dpg.add_argument("--accountant", choices=ACCOUNTANTS, default=None,
                     help="privacy accountant (default: rdp)")
    dpg.add_argument("--dp-mechanism", dest="dp_mechanism", choices=MECHANISMS, default=None,
                     help="integer noise for --dp distributed (default: ddg)")
    _add_audit_options(train)
    train.add_argument("--task", default="digits", metavar="SPEC",
                       help="the model and data: 'digits' (default) or 'module:function', your own task "
                            "factory: function(task_config, seed) -> secagg.task.Task (see the README); "
                            "every client of a deployment names the same one")
    train.add_argument("--config", type=Path, default=None,
                       help="JSON configuration to start from (as in results.json's 'config'); "
                            "flags given on the command line override it")


def _add_audit_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "privacy audit (simulation only)",
        "Insert K canary clients whose updates are random directions and estimate the epsilon of the "
        "final model from their cosines with it (Andrew et al. 2024), next to the accountant's; with "
        "--audit-inclusion half also a 95% lower bound (Steinke et al. 2023). Needs --dp central, "
        "adaptive, local or distributed.")
    group.add_argument("--audit-canaries", dest="audit_canaries", type=int, default=None, metavar="K",
                       help="canary clients to insert (>= 4; default: no audit)")
    group.add_argument("--audit-inclusion", dest="audit_inclusion", choices=INCLUSION, default=None,
                       help="all: every canary inserted; half: each with probability 1/2, which adds the "
                            "lower bound (default: half)")


def with_audit(args: argparse.Namespace, config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with its aggregator wrapped in :class:`~dp.audit.CanaryAudit` for
    ``--audit-canaries`` (unchanged without it). Distributed DP plans its ring and denominator for
    the canaries too, with the noise still planned for the real clients (``min_clients``), so its
    epsilon is that of the real clients. Raises :class:`FlagError`."""
    k = getattr(args, "audit_canaries", None)
    if k is None:
        if getattr(args, "audit_inclusion", None) is not None:
            raise FlagError("--audit-inclusion: needs --audit-canaries")
        return config
    if args.command == "serve":
        raise FlagError("--audit-canaries: canaries are fake clients for a simulated audit; secagg serve "
                        "does not insert them into a deployment (audit with secagg train)")
    agg = config.fedavg.aggregator
    if args.dp == "dpsgd" or not agg.claims_dp():
        raise FlagError(f"--audit-canaries: audits client-level DP: needs --dp central, adaptive, local or "
                        f"distributed (or a --config whose aggregator is one), got --dp {args.dp}")
    try:
        if isinstance(agg, DistributedDP):
            agg = dataclasses.replace(agg, expected_clients=agg.expected_clients + k,
                                      min_clients=agg.min_clients or agg.expected_clients)
        audit = CanaryAudit(canaries=k, seed=config.seed, inclusion=args.audit_inclusion or "half", inner=agg)
    except ConfigError as exc:
        raise FlagError(f"--audit-canaries: {exc}") from exc
    return _with(config, ("fedavg", "aggregator"), audit)


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The run configuration: ``--config`` (or the defaults) with the given flags applied."""
    return with_audit(args, _base_config(args))


def _base_config(args: argparse.Namespace) -> ExperimentConfig:
    """:func:`config_from_args` before ``--audit-canaries``."""
    config = (ExperimentConfig.from_json(args.config.read_text()) if args.config is not None
              else ExperimentConfig())
    for dest, path in _FIELDS.items():
        value = getattr(args, dest)
        if value is not None:
            config = _with(config, path, value)
    if args.sample_rate is not None:
        if args.fraction is not None:
            raise FlagError("--sample-rate: replaces --fraction (Poisson sampling at that rate); give one")
        if not 0.0 < args.sample_rate <= 1.0:
            raise FlagError(f"--sample-rate: must be in (0, 1], got {args.sample_rate}")
        config = _with(_with(config, ("fedavg", "fraction"), args.sample_rate),
                       ("fedavg", "sampling"), "poisson")
    secure = (SecureSum(clip=DEFAULT_SECURE_CLIP if args.secure_clip is None else args.secure_clip,
                        bits=DEFAULT_SECURE_BITS if args.secure_bits is None else args.secure_bits,
                        graph=args.secure_graph, dropout=args.secure_dropout,
                        malicious=args.secure_malicious, corrupt_fraction=args.secure_corrupt)
              if args.secure else None)
    if args.dp not in ("none", "dpsgd"):
        for flag, given in (("--aggregator", args.aggregator is not None),
                            ("--clip-norm", args.clip_norm is not None),
                            ("--byzantine-f", args.byzantine_f is not None),
                            ("--bucketing", args.bucketing is not None), ("--nnm", args.nnm)):
            if given:
                raise FlagError(f"{flag}: cannot be combined with --dp {args.dp} (the DP aggregator "
                                f"clips and aggregates itself)")
        return _with(config, ("fedavg", "aggregator"), dp_aggregator(args, config, secure))
    _check_dp_flags(args)
    if args.dp == "dpsgd":
        config = _with(config, ("fedavg", "trainer"), _dpsgd_trainer(args, config))
    if args.aggregator is not None:
        config = _with(config, ("fedavg", "aggregator"), robust_aggregator(
            args.aggregator, f=args.byzantine_f, bucketing=args.bucketing, nnm=args.nnm, secure=secure,
            clients_per_round=config.fedavg.clients_per_round(config.task.num_clients),
            threat_model=args.bucket_threat_model))
    else:
        for flag, given in (("--byzantine-f", args.byzantine_f is not None),
                            ("--bucketing", args.bucketing is not None), ("--nnm", args.nnm),
                            ("--bucket-threat-model", args.bucket_threat_model is not None)):
            if given:
                raise FlagError(f"{flag}: needs --aggregator (one of {', '.join(ROBUST_RULES)})")
        if secure is not None:
            config = _with(config, ("fedavg", "aggregator"), secure)
    if args.clip_norm is not None:
        config = _with(config, ("fedavg", "aggregator"),
                       ClipNorm(max_norm=args.clip_norm, inner=config.fedavg.aggregator))
    return config


def _check_dp_flags(args: argparse.Namespace) -> None:
    """Refuse DP flags that the chosen ``--dp`` mode does not use."""
    unused: dict[str, tuple[str, ...]] = {
        "none": ("--noise-multiplier", "--clip", "--delta", "--target-epsilon", "--accountant",
                 "--dp-mechanism"),
        "central": ("--dp-mechanism",), "adaptive": ("--dp-mechanism",), "dpsgd": ("--dp-mechanism",),
        "local": ("--dp-mechanism", "--accountant"), "distributed": (),
    }
    given = {"--noise-multiplier": args.noise_multiplier, "--clip": args.clip, "--delta": args.delta,
             "--target-epsilon": args.target_epsilon, "--accountant": args.accountant,
             "--dp-mechanism": args.dp_mechanism}
    for flag in unused[args.dp]:
        if given[flag] is not None:
            why = {"none": "needs --dp (one of " + ", ".join(DP_MODES[1:]) + ")",
                   "local": "local DP is accounted with RDP only"}.get(args.dp,
                                                                        f"is not used by --dp {args.dp}")
            if flag == "--dp-mechanism":
                why = "needs --dp distributed"
            raise FlagError(f"{flag}: {why}")


def _noise_multiplier(args: argparse.Namespace, solve: Any) -> float:
    """``--noise-multiplier``, or ``solve(target_epsilon)`` when only ``--target-epsilon`` is given."""
    if args.noise_multiplier is not None:
        return float(args.noise_multiplier)
    if args.target_epsilon is None:
        raise FlagError(f"--noise-multiplier: --dp {args.dp} needs --noise-multiplier or --target-epsilon")
    if solve is None:
        raise FlagError(f"--noise-multiplier: --dp {args.dp} needs --noise-multiplier (the budget "
                        f"--target-epsilon is enforced but not solved for)")
    try:
        return float(solve(args.target_epsilon))
    except ConfigError as exc:
        raise FlagError(f"--target-epsilon: {exc}") from exc


def dp_aggregator(args: argparse.Namespace, config: ExperimentConfig,
                  secure: SecureSum | None) -> Aggregator:
    """The aggregator of ``--dp central|local|adaptive|distributed`` (flags already parsed).

    The accounting follows the sampler: Poisson sampling (``--sample-rate``) claims amplification at
    rate q, a fixed-size sampler is accounted without (``sampling="none"``). The denominator is the
    expected number of clients, q N (or the fixed round size). Raises :class:`FlagError`.
    """
    _check_dp_flags(args)
    f = config.fedavg
    n, rounds = config.task.num_clients, f.rounds
    poisson = f.sampling == "poisson"
    q = f.fraction
    expected = q * n if poisson else float(f.clients_per_round(n))
    sampling = "poisson" if poisson else "none"
    accountant = args.accountant or "rdp"
    clip = DEFAULT_CLIP if args.clip is None else args.clip
    delta = DEFAULT_DELTA if args.delta is None else args.delta
    # a DP sum needs a fixed grid: plan it for every client of the task (a public bound)
    unweighted = (dataclasses.replace(secure, weighted=False, max_clients=n) if secure is not None
                  else Mean(weighted=False))
    try:
        if args.dp in ("central", "adaptive"):
            z = _noise_multiplier(args, lambda eps: noise_multiplier_for(eps, delta, q, rounds, accountant,
                                                                         sampling))
            common = dict(noise_multiplier=z, expected_clients=expected, sample_rate=q, delta=delta,
                          accountant=accountant, sampling=sampling, target_epsilon=args.target_epsilon,
                          inner=unweighted)
            if args.dp == "central":
                return DPFedAvg(clip=clip, **common)
            return AdaptiveClipDP(initial_clip=clip, **common)
        if args.dp == "local":
            # worst case: a client in every round, no amplification; sensitivity 2C halves z
            z = _noise_multiplier(args, lambda eps: 2.0 * noise_multiplier_for(eps, delta, 1.0, rounds,
                                                                               "rdp", "none"))
            inner: Aggregator = Mean()
            if secure is not None:
                inner = secure if args.secure_clip is not None else dataclasses.replace(
                    secure, clip=clip * (1.0 + 6.0 * z))
            return LocalDP(clip=clip, noise_multiplier=z, delta=delta, target_epsilon=args.target_epsilon,
                           inner=inner)
        # distributed: always a secure sum, planned for a fixed round size
        if poisson:
            raise FlagError("--sample-rate: --dp distributed plans its ring for a fixed round size; "
                            "use --fraction")
        names = {fl.name for fl in dataclasses.fields(DistributedDP)}
        extra: dict[str, Any] = {}
        for name, value in (("delta", delta), ("accountant", accountant),
                            ("target_epsilon", args.target_epsilon)):
            if name in names:
                extra[name] = value
            elif getattr(args, name) is not None:
                raise FlagError(f"--{name.replace('_', '-')}: not supported by --dp distributed yet")
        z = _noise_multiplier(args, None)
        s = secure if secure is not None else SecureSum()
        return DistributedDP(mechanism=args.dp_mechanism or "ddg", clip=clip, noise_multiplier=z,
                             bits=DistributedDP().bits if args.secure_bits is None else args.secure_bits,
                             expected_clients=int(expected), graph=s.graph, dropout=s.dropout,
                             malicious=s.malicious, corrupt_fraction=s.corrupt_fraction, **extra)
    except FlagError:
        raise
    except ConfigError as exc:
        raise FlagError(f"--dp {args.dp}: {exc}") from exc


def _dpsgd_trainer(args: argparse.Namespace, config: ExperimentConfig) -> DPSGDTrainer:
    """The record-level DP-SGD trainer of ``--dp dpsgd``; its batches/epochs are the client's."""
    z = _noise_multiplier(args, None)
    client = config.fedavg.client
    try:
        return DPSGDTrainer(noise_multiplier=z,
                            max_grad_norm=DEFAULT_CLIP if args.clip is None else args.clip,
                            delta=DEFAULT_DELTA if args.delta is None else args.delta,
                            accountant=args.accountant or "rdp", target_epsilon=args.target_epsilon,
                            batch_size=client.batch_size, epochs=client.epochs)
    except ConfigError as exc:
        raise FlagError(f"--dp dpsgd: {exc}") from exc


def _bucket_flag_error(exc: ConfigError) -> str:
    """A :class:`SecureBucketing` error, with the field it names read as the flag that sets it."""
    text = str(exc)
    for field_, flag in (("bucket_size: ", "--bucketing: "), ("threat_model: ", "--bucket-threat-model: ")):
        if text.startswith(field_):
            return flag + text.removeprefix(field_)
    return f"--secure: {text}"


def robust_aggregator(rule: str, *, f: int | None = None, bucketing: int | None = None,
                      nnm: bool = False, secure: SecureSum | None = None,
                      clients_per_round: int | None = None, threat_model: str | None = None) -> Aggregator:
    """The aggregator the robust-aggregation flags describe, checked against the round size.

    ``Bucketing(inner=NearestNeighbourMixing(inner=rule))``, each wrapper only when asked for; with
    ``secure`` the bucketing is ``SecureBucketing`` (secure sums inside buckets, the rule across their
    means, under ``threat_model``: see :class:`SecureBucketing`). ``clients_per_round``, when known, is
    checked against each rule's bound (on the number of bucket means when bucketing) and against the
    secure buckets' collusion bound. Raises :class:`FlagError` naming the flag and the bound.
    """
    if threat_model is not None and secure is None:
        raise FlagError("--bucket-threat-model: needs --secure (it is the threat model of secure buckets)")
    threat_model = threat_model or SecureBucketing().threat_model
    if rule not in ROBUST_RULES:
        raise FlagError(f"--aggregator: unknown rule {rule!r}; choose from {', '.join(ROBUST_RULES)}")
    uses_f = _takes_f(rule) or nnm
    if f is not None and not uses_f:
        raise FlagError(f"--byzantine-f: --aggregator {rule} takes no f (rules that do: "
                        f"{', '.join(k for k in ROBUST_RULES if _takes_f(k))}; or add --nnm)")
    f = DEFAULT_BYZANTINE_F if f is None else f
    if f < 0:
        raise FlagError(f"--byzantine-f: must be >= 0, got {f}")
    min_bucket = 1 if secure is None else 2 if threat_model == "honest-but-curious-server" else 3
    if bucketing is not None and bucketing < min_bucket:
        why = ("" if secure is None else " with --secure (a one-client bucket would expose that client)"
               if min_bucket == 2 else
               " with --secure: a bucket of s clients tolerates s - 2 clients colluding with the server, so "
               "a bucket of 2 exposes its honest client to one colluder; pass --bucket-threat-model "
               "honest-but-curious-server to assume no client colludes")
        raise FlagError(f"--bucketing: must be >= {min_bucket}{why}, got {bucketing}")
    size = bucketing if bucketing is not None or secure is None else SecureBucketing().bucket_size

    if clients_per_round is not None:
        n = clients_per_round
        where = f"{n} clients per round"
        if secure is not None:
            if n < 2:
                raise FlagError(f"--secure: --aggregator {rule} with --secure needs >= 2 clients per "
                                f"round (secure buckets), got {n}")
            try:
                SecureBucketing(bucket_size=size, secure=secure, threat_model=threat_model).check_collusion(n)
            except ConfigError as exc:
                raise FlagError(_bucket_flag_error(exc)) from exc
            n = max(1, n // size)  # a short last bucket joins the one before
            where += f" in secure buckets of >= {size}"
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
        try:
            agg = SecureBucketing(bucket_size=size, inner=agg, secure=secure, threat_model=threat_model)
        except ConfigError as exc:
            raise FlagError(_bucket_flag_error(exc)) from exc
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
                                        + ("" if audit is None else f"  audit eps {audit:.2f}"))

        executor = _executor(args)
        try:
            result = run_experiment(config, args.out, resume=args.resume, on_round=on_round,
                                    executor=executor, task_factory=load_task_factory(args.task))
        finally:
            if executor is not None:
                executor.close()

    secure = any(key.endswith("client_bytes_mean") for row in result.history for key in row)
    table = Table(title="FedAvg on digits: test metrics per round"
                  + (" (KiB: mean traffic per client)" if secure else ""))
    private = any(row.get("epsilon") is not None for row in result.history)
    audited = any(audit_entry(row) for row in result.history)
    columns = ["round", "clients", "train loss", "test loss", "accuracy", "seconds"]
    for col in (columns + (["epsilon"] if private else []) + (["audit eps"] if audited else [])
                + (["KiB", "dropped"] if secure else [])):
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

    from attacks.bench import run

    if args.preset is not None and args.bench_config is not None:
        raise ConfigError("--preset, --config: give one of them")
    if args.jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {args.jobs}")
    ray = bool(args.ray or args.ray_address)
    if not ray and args.ray_threads is not None:
        raise ConfigError("--ray-threads: needs --ray")
    options = dict(jobs=args.jobs, progress=not args.no_progress, backend="ray" if ray else "local",
                   ray_address=args.ray_address, ray_threads=args.ray_threads)
    if args.audit_canaries is None:
        if args.audit_inclusion is not None:
            raise ConfigError("--audit-inclusion: needs --audit-canaries")
        paths = run(args.out, preset=args.preset, config_file=args.bench_config, **options)
    else:  # every DP defence of the grid inside a canary audit
        from attacks.bench import load, run_grid, write_reports
        from attacks.bench.runner import Audit

        if args.audit_canaries < 4:
            raise ConfigError(f"--audit-canaries: must be >= 4, got {args.audit_canaries}")
        grid = load(args.bench_config, None) if args.bench_config is not None else load(
            None, args.preset or "default")
        rows = run_grid(grid, args.out, audit=Audit(args.audit_canaries, args.audit_inclusion or "half"),
                        **options)
        paths = {"json": args.out / "results.json", **write_reports(args.out, grid, rows)}
    console = Console()
    console.print(paths["summary"].read_text())
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
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
        if args.command == "bench":
            return _bench(args)
        if args.command == "serve":
            try:
                config = config_from_args(args)
            except FlagError as exc:
                args.parser.error(str(exc))
            return run_serve(args, config)
        if args.command == "client":
            return run_client(args)
        if args.command == "keys":
            return run_keys(args)
    except SecAggError as exc:
        print(f"secagg: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"secagg: error: {exc}", file=sys.stderr)
        return 1
    return 2

