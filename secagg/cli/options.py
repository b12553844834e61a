"""The ``secagg`` argument parsers: every subcommand's flags, their help and defaults (no composition)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dp.accounting import ACCOUNTANTS
from dp.audit import INCLUSION
from dp.distributed import MECHANISMS, DistributedDP
from secagg import __version__
from secagg.aggregation import (
    FLAME,
    AdaptiveRobustClipping,
    Aggregator,
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    DnC,
    FLTrust,
    FoolsGold,
    GeometricMedian,
    Krum,
    Meamed,
    Mean,
    MinimumDiameterAveraging,
    MoNNA,
    MultiKrum,
    RobustLearningRate,
    SecureBucketing,
    SignGuard,
    TrimmedMean,
)
from secagg.aggregation.secure import GRAPHS
from secagg.aggregation.secure_bucketing import THREAT_MODELS
from secagg.data.partition import KINDS as PARTITION_KINDS
from secagg.data.partition import QUANTITIES
from secagg.data.shift import TEST_SETS as SHIFT_TEST_SETS
from secagg.data.shift import FeatureShift
from secagg.experiment import ExperimentConfig
from secagg.fedavg.optimizers import ServerOptimizer
from secagg.layout import BUFFER_POLICIES, NORM_POLICIES
from secagg.models import model_names
from secagg.rotation import TRANSFORMS
from secagg.transport.commands import (
    add_client_parser,
    add_keys_parser,
    add_serve_options,
)

_D = ExperimentConfig()  # defaults shown in --help come from the config classes themselves


# flag dest -> (section, field) in ExperimentConfig
_FIELDS: dict[str, tuple[str, ...]] = {
    "clients": ("task", "num_clients"),
    "model": ("task", "model"),
    "partition": ("task", "partition", "kind"),
    "alpha": ("task", "partition", "alpha"),
    "shards_per_client": ("task", "partition", "shards_per_client"),
    "quantity": ("task", "partition", "quantity"),
    "quantity_alpha": ("task", "partition", "quantity_alpha"),
    "min_size": ("task", "partition", "min_size"),
    "rounds": ("fedavg", "rounds"),
    "fraction": ("fedavg", "fraction"),
    "local_epochs": ("fedavg", "client", "epochs"),
    "batch_size": ("fedavg", "client", "batch_size"),
    "lr": ("fedavg", "client", "lr"),
    "server_lr": ("fedavg", "server_lr"),
    "server_momentum": ("fedavg", "server_momentum"),
    "proximal_mu": ("fedavg", "client", "proximal_mu"),
    "buffers": ("fedavg", "buffers"),
    "norm_layers": ("fedavg", "norm_layers"),
    "scaffold": ("fedavg", "scaffold"),
    "seed": ("seed",),
}


# --aggregator NAME -> rule class; the names are the registry kinds
ROBUST_RULES: dict[str, type[Aggregator]] = {
    cls.kind: cls for cls in (Mean, CoordinateMedian, TrimmedMean, Krum, MultiKrum, Bulyan,
                              GeometricMedian, CenteredClipping, Meamed, MoNNA, MinimumDiameterAveraging,
                              AdaptiveRobustClipping, FLTrust, FLAME, FoolsGold, DnC, SignGuard,
                              RobustLearningRate)}
#: rules that cannot run on secure buckets: FLTrust weighs each row against the server's root-data
#: update (a bucket sum has none of its own), FoolsGold keeps a history per client id (a bucket is
#: not a client)
NOT_ON_SECURE_BUCKETS = (FLTrust.kind, FoolsGold.kind)


# the fewest updates per round each rule accepts, as a function of f, and that bound in words
_MIN_UPDATES: dict[str, tuple[Any, str]] = {
    TrimmedMean.kind: (lambda f: 2 * f + 1, "2f < n"),
    Krum.kind: (lambda f: f + 3, "n >= f + 3"),
    MultiKrum.kind: (lambda f: f + 3, "n >= f + 3"),
    Bulyan.kind: (lambda f: 4 * f + 3, "n >= 4f + 3"),
    Meamed.kind: (lambda f: f + 1, "f < n"),
    MoNNA.kind: (lambda f: f + 1, "f < n"),
    MinimumDiameterAveraging.kind: (lambda f: f + 1, "f < n"),
}


DEFAULT_BYZANTINE_F = 1


def _default(path: tuple[str, ...]) -> Any:
    value: Any = _D
    for name in path:
        value = getattr(value, name)
    return value


DP_MODES = ("none", "central", "local", "adaptive", "distributed", "dpsgd")


DEFAULT_CLIP = 1.0


DEFAULT_DELTA = 1e-5


DEFAULT_SECURE_RANGE = 1.0


DEFAULT_SECURE_BITS = 32

#: --secure-rotation's L2 clip: above the digits MLP's weighted updates (0.3-1.8 under the defaults)
DEFAULT_ROTATION_CLIP = 2.0


def _build_parser() -> argparse.ArgumentParser:
    return _build_parsers()[0]


def _build_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The ``secagg`` parser and its ``train`` subparser (for errors found after parsing)."""
    parser = argparse.ArgumentParser(
        prog="secagg", description="Privacy-hardened federated learning.")
    parser.add_argument("--version", action="version", version=f"secagg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="federated training (bundled digits, or a real data set from local files)",
        description="FedAvg on scikit-learn's digits (or --dataset with --data: MNIST, Fashion-MNIST, "
                    "CIFAR-10, FEMNIST, MedMNIST from local files), split across simulated clients. Writes "
                    "results.json, results.csv, accuracy.png and a checkpoint to --out.")

    train.set_defaults(parser=train)
    _add_training_options(train, "train")
    _add_ray_options(train, "the simulated clients of each round")
    train.add_argument("--out", type=Path, default=Path("runs/train"),
                       help="output directory (default: runs/train)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run checkpointed in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench = sub.add_parser(
        "bench", help="attack benchmark: attacks x defences x attackers x heterogeneity",
        description="Trains one FedAvg run per cell of an attack grid (bundled digits, or the grid's "
                    "--dataset read from --data) and writes results.csv, results.json, summary.md and PNG "
                    "plots to --out. Resumes a grid already partly in --out.")
    bench.add_argument("--preset", choices=BENCH_PRESETS, default=None,
                       help="a named grid (default: default; quick runs in minutes, used by CI; mnist, "
                            "fashion-mnist, cifar10, femnist and medmnist train on that data set: give "
                            "--data; breast-cancer trains the tabular model on the bundled breast-cancer "
                            "table)")
    bench.add_argument("--config", dest="bench_config", type=Path, default=None,
                       help="a grid file (TOML) instead of a preset")
    bench.add_argument("--out", type=Path, default=Path("runs/bench"), help="output directory")
    bench.add_argument("--jobs", type=int, default=None,
                       help="cells run in parallel processes (default: one per available core; 1: one "
                            "after the other in this process)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_data_options(bench, "bench")
    _add_ray_options(bench, "the grid's cells")
    _add_audit_options(bench)
    serve = sub.add_parser(
        "serve", help="run the federated server for remote clients over gRPC",
        description="Trains like 'secagg train' (same flags), but the clients are remote processes "
                    "('secagg client') that log in with Ed25519 identities ('secagg keys'). Secure "
                    "aggregation, DP and robust rules run as configured; checkpoints after every round "
                    "(--resume continues).")
    serve.set_defaults(parser=serve)
    _add_training_options(serve, "serve")
    serve.add_argument("--out", type=Path, default=Path("runs/serve"),
                       help="output directory (default: runs/serve)")
    serve.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    add_serve_options(serve)
    _add_data_options(add_client_parser(sub), "client")
    add_keys_parser(sub)
    return parser, train


# the bench presets (attacks.bench.config.PRESETS, spelled here: the parser does not import attacks)
BENCH_PRESETS = ("quick", "default", "full", "mnist", "fashion-mnist", "cifar10", "femnist", "medmnist",
                 "breast-cancer")

_DATA_FILES = ("MNIST/raw/ and FashionMNIST/raw/ (torchvision's IDX files, plain or .gz), "
               "cifar-10-batches-bin/ (preferred) or cifar-10-batches-py/, LEAF's train/*.json and "
               "test/*.json (femnist), <name>.npz (MedMNIST)")


def _add_data_options(p: argparse.ArgumentParser, command: str) -> None:
    """``--dataset`` and ``--data``: which data set, and this machine's folder of its files."""
    group = p.add_argument_group(
        "data", "Digits and breast-cancer ship with scikit-learn; the other data sets load from local "
                "files in their standard formats, under --data. Nothing is downloaded.")
    names = ("digits (bundled), breast-cancer (bundled), mnist, fashion-mnist, cifar10, femnist or "
             "medmnist:<name> (e.g. medmnist:pathmnist)")
    if command == "client":
        group.add_argument("--dataset", default=None, metavar="NAME",
                           help=f"check that the server's run trains on NAME: {names} (default: take the "
                                f"server's)")
        group.add_argument("--data", type=Path, default=None, metavar="PATH",
                           help=f"this machine's copy of the server's data set: the folder holding "
                                f"{_DATA_FILES}. Needed unless the run trains on digits or breast-cancer; "
                                f"the path in the server's configuration is never read")
        return
    default = "the grid's [run] dataset" if command == "bench" else "digits"
    group.add_argument("--dataset", default=None, metavar="NAME",
                       help=f"the data set: {names} (default: {default})")
    where = (" (replaces the grid's [run] data)" if command == "bench" else
             "; every secagg client names its own copy with its --data" if command == "serve" else "")
    group.add_argument("--data", type=Path, default=None, metavar="PATH",
                       help=f"the folder holding the data set's files: {_DATA_FILES}{where}")
    if command == "bench":
        return
    group.add_argument("--train-size", dest="train_size", type=int, default=None, metavar="N",
                       help="train on a seeded random subset of N training examples (default: all)")
    group.add_argument("--test-size", dest="test_size", type=int, default=None, metavar="N",
                       help="evaluate on a seeded random subset of N test examples (default: all)")


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


def _add_training_options(train: argparse.ArgumentParser, command: str = "train") -> None:
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
    opt("--proximal-mu", "proximal_mu", "FedProx: each client adds (mu/2) ||w - w_global||^2 to its "
        "local loss; 0 = off")
    train.add_argument("--server-optimizer", dest="server_optimizer", choices=ServerOptimizer.kinds(),
                       default=None,
                       help="server optimizer, the aggregate as its pseudo-gradient: sgd (FedAvg; FedAvgM "
                            "with --server-momentum) or adam, yogi, adagrad (FedAdam, FedYogi, FedAdagrad, "
                            "Reddi et al. 2021) (default: --config's, else sgd)")
    opt("--server-lr", "server_lr", "server learning rate eta (1 = plain FedAvg; with --server-optimizer "
        "adam/yogi/adagrad the default is that kind's: 0.1/0.01/0.1)")
    opt("--server-momentum", "server_momentum", "server momentum (FedAvgM, --server-optimizer sgd); 0 = off")
    train.add_argument("--scaffold", dest="scaffold", action="store_true", default=None,
                       help="SCAFFOLD (Karimireddy et al. 2020, option II): control variates correct every "
                            "local step; each client's control change is summed with its update (default: "
                            "--config's, else off)")
    for name, what, default in (("beta1", "first-moment decay", "0.9; adagrad 0"),
                                ("beta2", "second-moment decay (adam, yogi)", "0.99"),
                                ("tau", "adaptivity tau added to sqrt(v)", "0.001")):
        train.add_argument(f"--server-{name}", dest=f"server_{name}", type=float, default=None,
                           help=f"--server-optimizer adam/yogi/adagrad: {what} (default: {default})")
    opt("--partition", "partition", "how data is split (natural: one writer per client for femnist, one "
        "site per client for breast-cancer, sites differing in case mix)",
        choices=PARTITION_KINDS)
    opt("--alpha", "alpha", "Dirichlet concentration for --partition dirichlet (smaller = more skew)")
    opt("--shards-per-client", "shards_per_client", "label shards per client for --partition shards")
    opt("--quantity", "quantity", "client sizes (quantity skew, composes with --partition iid, dirichlet, "
        "shards): equal; power-law, a few large sites and many small ones, size of the rank-r client ~ "
        "(r+1)^-A; dirichlet, shares ~ Dir(A) (NIID-Bench)", choices=QUANTITIES)
    opt("--quantity-alpha", "quantity_alpha", "A: the power-law exponent or the Dirichlet concentration of "
        "--quantity", metavar="A")
    opt("--min-size", "min_size", "fewest examples any client holds", metavar="N")
    _add_shift_options(train)
    opt("--model", "model", "model architecture", choices=model_names())
    opt("--buffers", "buffers", "BatchNorm-style buffers: aggregate with the update, or keep frozen",
        choices=BUFFER_POLICIES)
    opt("--norm-layers", "norm_layers", "BatchNorm layers: federated like every layer, or local (FedBN, Li "
        "et al. 2021: each client keeps its own; needs a model with BatchNorm, e.g. cnn-bn, mlp-bn)",
        choices=NORM_POLICIES)
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
    secure.add_argument("--secure-range", "--secure-clip", dest="secure_range", type=float, default=None,
                        help="per-coordinate quantization range of the weighted update, SecureSum's "
                             "value_range (--secure-clip: its old name, still accepted) (default: "
                             f"{DEFAULT_SECURE_RANGE}; with --dp local, clip * (1 + 6 z))")
    secure.add_argument("--secure-bits", type=int, default=None,
                        help=f"ring Z_(2^bits) (default: {DEFAULT_SECURE_BITS}; with --dp distributed, "
                             f"{DistributedDP().bits})")
    secure.add_argument("--secure-rotation", dest="secure_rotation", action="store_true",
                        help="compress for the ring: each client clips its update to --secure-clip-norm "
                             "(L2), rotates it (random Hadamard, public signs) and rounds it at random to "
                             "--secure-bits bits, single coordinates wrapping; the quantum is chosen from "
                             "the clients and the clip so the sum wraps with probability <= 1e-9")
    secure.add_argument("--secure-clip-norm", dest="secure_clip_norm", type=float, default=None, metavar="C",
                        help=f"--secure-rotation: the L2 clip of each client's weighted update (default: "
                             f"{DEFAULT_ROTATION_CLIP})")
    secure.add_argument("--secure-transform", dest="secure_transform", choices=TRANSFORMS, default=None,
                        help="--secure-rotation: the rotation; hadamard pads the update to a power of 2, "
                             "dct sends one word per coordinate with a quantum sqrt(2) coarser "
                             "(default: hadamard)")
    secure.add_argument("--secure-dropout", type=float, default=0.0,
                        help="fraction of sampled clients that drop after sharing keys (simulation)")
    secure.add_argument("--secure-malicious", action="store_true",
                        help="malicious-server mode: signed keys and a consistency round "
                             "(tolerates --secure-corrupt colluding clients)")
    secure.add_argument("--secure-corrupt", type=float, default=0.05,
                        help="fraction of clients that may collude with the server (default: 0.05)")
    secure.add_argument("--combiners", type=int, default=None, metavar="M",
                        help="two-level secure sum: client c sits under combiner c mod M, each combiner "
                             "securely sums its clients, the server securely sums the combiners' sums "
                             "(secagg serve: the combiners are processes, 'secagg serve --combiner J'; "
                             "train: simulated in this process) (default: one level)")
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
    _add_data_options(train, command)
    _add_audit_options(train)
    train.add_argument("--task", default="digits", metavar="SPEC",
                       help="the model and data: 'digits' (default: the built-in task on --dataset), "
                            "'breast-cancer' (scikit-learn's Wisconsin diagnostic table, bundled; implies "
                            "--dataset breast-cancer and, unless --model is given, --model tabular), 'gan' "
                            "(a federated GAN on digits: starts from its own tuned configuration, "
                            "records mode coverage and a Frechet distance, writes image grids) or "
                            "'module:function', your own task factory: function(task_config, seed) -> "
                            "secagg.task.Task (see the README); every client of a deployment names the "
                            "same one")
    gan = train.add_argument_group(
        "federated GAN (--task gan)",
        "Each client trains the discriminator on its data and the generator against it; both travel in "
        "one update through the configured aggregation (--secure, --dp, --aggregator). Without --config "
        "the run starts from secagg.gan.gan_experiment() (10 clients, 200 rounds, batch 32, lr 2e-3).")
    gan.add_argument("--gan-steps", dest="gan_steps", type=int, default=None, metavar="N",
                     help="local steps per round, each a discriminator then a generator step (replaces "
                          "--local-epochs for the GAN) (default: 10)")
    gan.add_argument("--gan-target", dest="gan_target", choices=("local", "global"), default=None,
                     help="the discriminator the generator trains against: the client's updated one "
                          "(local, default) or the round's global one, frozen (global: the generator's "
                          "half never depends on client data)")
    train.add_argument("--config", type=Path, default=None,
                       help="JSON configuration to start from (as in results.json's 'config'); "
                            "flags given on the command line override it")


_SHIFT = FeatureShift()
#: --shift-* flag dest -> FeatureShift field
SHIFT_FLAGS = {"shift_intensity": "intensity", "shift_contrast": "contrast", "shift_blur": "blur",
               "shift_rotation": "rotation", "shift_test": "test"}


def _add_shift_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "feature shift (each client sees its data through its own seeded acquisition)",
        "Per client: rotation, Gaussian blur, then gain * x + offset, each drawn uniformly within the "
        "strengths below (secagg.data.shift). Tabular data (breast-cancer) gets only gain and offset. Any "
        "--shift-* flag implies --feature-shift.")
    group.add_argument("--feature-shift", dest="feature_shift", action="store_true",
                       help="turn feature shift on (default strengths unless --config sets its own)")
    group.add_argument("--shift-intensity", dest="shift_intensity", type=float, default=None, metavar="D",
                       help=f"brightness offsets in [-D, D], D in [0, 1] (default: {_SHIFT.intensity})")
    group.add_argument("--shift-contrast", dest="shift_contrast", type=float, default=None, metavar="C",
                       help=f"gains in [1-C, 1+C], C in [0, 1) (default: {_SHIFT.contrast})")
    group.add_argument("--shift-blur", dest="shift_blur", type=float, default=None, metavar="S",
                       help=f"Gaussian blur sigma in [0, S] pixels, S <= 10 (default: {_SHIFT.blur})")
    group.add_argument("--shift-rotation", dest="shift_rotation", type=float, default=None, metavar="DEG",
                       help=f"rotation in [-DEG, DEG] degrees, DEG <= 180 (default: {_SHIFT.rotation})")
    group.add_argument("--shift-test", dest="shift_test", choices=SHIFT_TEST_SETS, default=None,
                       help="the test set: clean (as loaded) or sites (each test example through a seeded "
                            f"site's acquisition) (default: {_SHIFT.test})")


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
