"""From flags to objects: the run configuration, the aggregators and trainers the flags describe,
checked against each other (:class:`FlagError` names the flag and the bound)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from dp.accounting import noise_multiplier_for
from dp.adaptive import AdaptiveClipDP
from dp.audit import CanaryAudit
from dp.central import DPFedAvg
from dp.distributed import DistributedDP
from dp.dpsgd import DPSGDTrainer
from dp.local import LocalDP
from secagg.aggregation import (
    Aggregator,
    Bucketing,
    ClipNorm,
    HierarchicalSecureSum,
    Mean,
    NearestNeighbourMixing,
    SecureBucketing,
    SecureSum,
)
from secagg.cli.options import (
    _FIELDS,
    _MIN_UPDATES,
    DEFAULT_BYZANTINE_F,
    DEFAULT_CLIP,
    DEFAULT_DELTA,
    DEFAULT_ROTATION_CLIP,
    DEFAULT_SECURE_BITS,
    DEFAULT_SECURE_RANGE,
    DP_MODES,
    NOT_ON_SECURE_BUCKETS,
    ROBUST_RULES,
    SHIFT_FLAGS,
    _add_training_options,
)
from secagg.data.datasets import is_bundled
from secagg.data.shift import FeatureShift
from secagg.errors import ConfigError
from secagg.experiment import ExperimentConfig
from secagg.fedavg.optimizers import ServerOptimizer, ServerSGD
from secagg.task import task_dataset, task_defaults


class FlagError(ConfigError):
    """A command-line flag (or combination of flags) that cannot work; the message names the flag."""


def _takes_f(kind: str) -> bool:
    return "f" in {f.name for f in dataclasses.fields(ROBUST_RULES[kind])}  # type: ignore[arg-type]


def _with(obj: Any, path: tuple[str, ...], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _with(getattr(obj, path[0]), path[1:], value)})


def _executor(args: argparse.Namespace) -> Any:
    """A RayExecutor when --ray/--ray-address was given, else None (the in-process loop)."""
    if not (args.ray or args.ray_address):
        if args.ray_threads is not None:
            raise ConfigError("--ray-threads: needs --ray")
        return None
    from secagg.parallel import RayExecutor

    return RayExecutor(address=args.ray_address, threads=args.ray_threads)


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


_DATA_FLAGS = (("data: ", "--data: "), ("dataset: ", "--dataset: "), ("partition.kind: ", "--partition: "),
               ("train_size: ", "--train-size: "), ("test_size: ", "--test-size: "))


def _data_flag_error(exc: ConfigError) -> str:
    """A :class:`TaskConfig` error, with the field it names read as the flag that sets it."""
    text = str(exc)
    for field_, flag in _DATA_FLAGS:
        if text.startswith(field_):
            return flag + text.removeprefix(field_)
    return f"--dataset: {text}"


def with_data(args: argparse.Namespace, config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with ``--dataset``, ``--data``, ``--train-size`` and ``--test-size`` applied
    (``--dataset digits`` or ``breast-cancer`` alone drops a data path from ``--config``). Raises
    :class:`FlagError` naming the flag."""
    dataset, data = getattr(args, "dataset", None), getattr(args, "data", None)
    changes: dict[str, Any] = {name: getattr(args, name) for name in ("train_size", "test_size")
                               if getattr(args, name, None) is not None}
    if dataset is not None:
        changes["dataset"] = dataset
        if is_bundled(dataset) and data is None:
            changes["data"] = None
    if data is not None:
        changes["data"] = os.fspath(data)
    if not changes:
        return config
    try:
        return _with(config, ("task",), dataclasses.replace(config.task, **changes))
    except ConfigError as exc:
        raise FlagError(_data_flag_error(exc)) from exc


def with_task(args: argparse.Namespace, config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with the data set and model a built-in ``--task`` implies (:data:`secagg.task.TASKS`;
    unchanged for ``digits`` and a user's ``module:function``): ``--task breast-cancer`` sets
    ``dataset="breast-cancer"`` (dropping a data path from ``--config``; ``--dataset`` may only repeat
    it) and ``model="tabular"``, unless ``--model`` is given (applied later, it wins) or ``--config``
    already trains on breast-cancer (its model is kept). Raises :class:`FlagError` naming the flag."""
    spec = getattr(args, "task", None)
    implied = task_defaults(spec) if isinstance(spec, str) else None
    if implied is None:
        return config
    dataset, model = implied
    try:
        task_dataset(spec, getattr(args, "dataset", None))
    except ConfigError as exc:
        raise FlagError(str(exc)) from exc
    changes: dict[str, Any] = {"dataset": dataset, "data": None}
    if getattr(args, "model", None) is None and config.task.dataset != dataset:
        changes["model"] = model
    try:
        return _with(config, ("task",), dataclasses.replace(config.task, **changes))
    except ConfigError as exc:
        raise FlagError(f"--task: {exc}") from exc


_OPTIMIZER_FLAGS = ("lr", "momentum", "beta1", "beta2", "tau")  # --server-NAME -> server_optimizer.NAME


GAN_TASK = "gan"


def _gan_module(args: argparse.Namespace) -> Any:
    """:mod:`secagg.gan` for ``--task gan``, else ``None``. The module is imported either way: it
    registers the ``"gan"`` trainer kind, which a ``--config`` may name (without ``--task gan`` the
    trainer then refuses the task's model, naming the flag)."""
    import secagg.gan

    return secagg.gan if getattr(args, "task", None) == GAN_TASK else None


def with_gan(args: argparse.Namespace, config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with the GAN trainer of ``--task gan`` and its flags (``--gan-steps``,
    ``--gan-target``) applied: a ``--config`` that trains with plain SGD gets the GAN trainer. Refuses
    the GAN flags without ``--task gan``, and with it ``--local-epochs`` (the GAN counts steps) and
    ``--dp dpsgd`` (record-level DP-SGD is not implemented for the GAN trainer). Raises
    :class:`FlagError` naming the flag."""
    gan = _gan_module(args)
    flags = (("--gan-steps", "steps", getattr(args, "gan_steps", None)),
             ("--gan-target", "generator_target", getattr(args, "gan_target", None)))
    if gan is None:
        for flag, _, value in flags:
            if value is not None:
                raise FlagError(f"{flag}: needs --task gan")
        return config
    if args.local_epochs is not None:
        raise FlagError("--local-epochs: the gan trainer counts local work in steps (each a discriminator "
                        "and a generator step); use --gan-steps")
    if args.dp == "dpsgd":
        raise FlagError("--dp dpsgd: record-level DP-SGD is not implemented for the 'gan' trainer "
                        "(secagg.gan.GANTrainer); use client-level DP: --dp central, adaptive, local or "
                        "distributed")
    trainer = config.fedavg.trainer
    if not isinstance(trainer, gan.GANTrainer):
        if trainer.kind != "sgd":
            raise FlagError(f"--task gan: trains with the 'gan' trainer, --config names trainer "
                            f"{trainer.kind!r}")
        trainer = gan.GANTrainer()
    changes = {name: value for _, name, value in flags if value is not None}
    try:
        trainer = dataclasses.replace(trainer, **changes)
    except ConfigError as exc:
        raise FlagError(f"--gan-steps: {exc}") from exc
    return _with(config, ("fedavg", "trainer"), trainer)


def with_server_optimizer(args: argparse.Namespace, config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with ``--server-optimizer``, ``--server-lr``, ``--server-momentum``,
    ``--server-beta1``, ``--server-beta2`` and ``--server-tau`` applied.

    Without ``--server-optimizer`` the flags change the configuration's own optimizer (``--config``'s
    ``server_optimizer``, else the ``"sgd"`` shorthands ``server_lr``/``server_momentum``). A named
    kind starts from ``--config``'s optimizer when it is of that kind, else from the kind's defaults.
    The ``"sgd"`` kind is always written as the shorthands (``server_optimizer`` unset), so
    ``--server-optimizer sgd`` and no flag give the same configuration. Raises :class:`FlagError`
    naming the flag (a parameter the kind does not have, or out of its bounds)."""
    given = {name: getattr(args, f"server_{name}", None) for name in _OPTIMIZER_FLAGS}
    given = {name: value for name, value in given.items() if value is not None}
    kind = getattr(args, "server_optimizer", None)
    f = config.fedavg
    if kind is None and not given:
        return config
    current = f.resolved_server_optimizer
    kind = kind if kind is not None else current.kind
    fields = ({k: v for k, v in current.to_dict().items() if k != "kind"} if current.kind == kind else {})
    known = {fl.name for fl in dataclasses.fields(ServerOptimizer._registry[kind])}  # type: ignore[arg-type]
    for name, value in given.items():
        if name not in known:
            has = ", ".join(f"--server-{n}" for n in _OPTIMIZER_FLAGS if n in known)
            raise FlagError(f"--server-{name}: not a parameter of --server-optimizer {kind} (it takes {has})")
        fields[name] = value
    try:
        optimizer = ServerOptimizer.from_dict({"kind": kind, **fields})
    except ConfigError as exc:
        text = str(exc)
        for name in _OPTIMIZER_FLAGS:
            text = text.replace(f"server_optimizer.{name}:", f"--server-{name}:")
        raise FlagError(text) from exc
    if isinstance(optimizer, ServerSGD):
        step = {"server_optimizer": None, "server_lr": optimizer.lr, "server_momentum": optimizer.momentum}
    else:
        step = {"server_optimizer": optimizer, "server_lr": 1.0, "server_momentum": 0.0}
    return _with(config, ("fedavg",), dataclasses.replace(f, **step))


def with_shift(args: argparse.Namespace, config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with ``--feature-shift`` and the ``--shift-*`` flags applied (each on top of
    ``--config``'s feature shift, else the defaults; any of them turns it on). Raises
    :class:`FlagError` naming the flag."""
    given = {field_: getattr(args, dest) for dest, field_ in SHIFT_FLAGS.items()
             if getattr(args, dest, None) is not None}
    if not getattr(args, "feature_shift", False) and not given:
        return config
    try:
        shift = dataclasses.replace(config.task.shift or FeatureShift(), **given)
    except ConfigError as exc:
        text = str(exc)
        flag = next((f"--shift-{field_}" for field_ in SHIFT_FLAGS.values()
                     if text.startswith(f"shift.{field_}: ")), "--feature-shift")
        raise FlagError(f"{flag}: {text.split(': ', 1)[1]}") from exc
    return _with(config, ("task", "shift"), shift)


#: training flags a combiner takes (its model and data, to size the updates), not from the top
_COMBINER_FLAGS = ("task", "dataset", "data")


def check_no_training_flags(args: argparse.Namespace) -> None:
    """``secagg serve --combiner``: :class:`FlagError` naming a training flag that was given (a combiner
    takes the run's configuration from the top server)."""
    probe = argparse.ArgumentParser(add_help=False)
    _add_training_options(probe, "serve")
    for action in probe._actions:
        if action.dest in _COMBINER_FLAGS or not action.option_strings:
            continue
        if getattr(args, action.dest, action.default) != action.default:
            raise FlagError(f"{action.option_strings[0]}: a combiner takes the run's configuration from "
                            "the top server (--top); give training flags to the top's 'secagg serve'")


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The run configuration: ``--config`` (or the defaults) with the given flags applied."""
    return with_audit(args, _base_config(args))


def secure_sum(args: argparse.Namespace) -> SecureSum | None:
    """The ``--secure*`` flags' SecureSum (``None`` without ``--secure``); :class:`FlagError` for a
    rotation flag without ``--secure-rotation`` or a per-coordinate range with it."""
    rotation = bool(getattr(args, "secure_rotation", False))
    clip_norm = getattr(args, "secure_clip_norm", None)
    if clip_norm is not None and not rotation:
        raise FlagError("--secure-clip-norm: is the L2 clip of --secure-rotation; add --secure-rotation")
    transform = getattr(args, "secure_transform", None)
    if transform is not None and not rotation:
        raise FlagError("--secure-transform: is the rotation of --secure-rotation; add --secure-rotation")
    if rotation and not args.secure:
        raise FlagError("--secure-rotation: compresses the secure sum; add --secure")
    if rotation and args.secure_range is not None:
        raise FlagError("--secure-range: the per-coordinate grid's range; --secure-rotation clips to "
                        "--secure-clip-norm instead")
    if not args.secure:
        return None
    return SecureSum(value_range=DEFAULT_SECURE_RANGE if args.secure_range is None else args.secure_range,
                     bits=DEFAULT_SECURE_BITS if args.secure_bits is None else args.secure_bits,
                     graph=args.secure_graph, dropout=args.secure_dropout,
                     malicious=args.secure_malicious, corrupt_fraction=args.secure_corrupt,
                     rotation=rotation, clip_norm=(DEFAULT_ROTATION_CLIP if clip_norm is None else clip_norm)
                     if rotation else 0.0, transform=transform or "hadamard")


def _base_config(args: argparse.Namespace) -> ExperimentConfig:
    """:func:`config_from_args` before ``--audit-canaries``."""
    gan = _gan_module(args)  # imported before --config is read: it registers the "gan" trainer
    config = (ExperimentConfig.from_json(args.config.read_text()) if args.config is not None
              else gan.gan_experiment() if gan is not None else ExperimentConfig())
    # first: --partition natural needs the data set's writers or sites
    config = with_data(args, with_task(args, config))
    for dest, path in _FIELDS.items():
        value = getattr(args, dest)
        if value is not None and dest not in ("server_lr", "server_momentum"):  # with_server_optimizer
            try:
                config = _with(config, path, value)
            except ConfigError as exc:
                if dest != "partition" or not str(exc).startswith(tuple(f for f, _ in _DATA_FLAGS)):
                    raise
                raise FlagError(_data_flag_error(exc)) from exc
    config = with_shift(args, config)
    config = with_server_optimizer(args, config)
    config = with_gan(args, config)
    if args.sample_rate is not None:
        if args.fraction is not None:
            raise FlagError("--sample-rate: replaces --fraction (Poisson sampling at that rate); give one")
        if not 0.0 < args.sample_rate <= 1.0:
            raise FlagError(f"--sample-rate: must be in (0, 1], got {args.sample_rate}")
        config = _with(_with(config, ("fedavg", "fraction"), args.sample_rate),
                       ("fedavg", "sampling"), "poisson")
    secure = secure_sum(args)
    if args.dp not in ("none", "dpsgd"):
        for flag, given in (("--aggregator", args.aggregator is not None),
                            ("--clip-norm", args.clip_norm is not None),
                            ("--byzantine-f", args.byzantine_f is not None),
                            ("--bucketing", args.bucketing is not None), ("--nnm", args.nnm)):
            if given:
                raise FlagError(f"{flag}: cannot be combined with --dp {args.dp} (the DP aggregator "
                                f"clips and aggregates itself)")
        config = _with(config, ("fedavg", "aggregator"), dp_aggregator(args, config, secure))
        return with_combiners(args, config)
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
    return with_combiners(args, config)


def with_combiners(args: argparse.Namespace, config: ExperimentConfig) -> ExperimentConfig:
    """``--combiners M``: the run's secure sum (alone, or under clipping or central/local DP) summed in
    two levels (:class:`HierarchicalSecureSum`); :class:`FlagError` when the run has no such sum."""
    m = getattr(args, "combiners", None)
    if m is None:
        return config
    outer: list[Aggregator] = []
    node = config.fedavg.aggregator
    while not isinstance(node, SecureSum) and isinstance(getattr(node, "inner", None), Aggregator):
        outer.append(node)
        node = node.inner  # type: ignore[attr-defined]
    if not isinstance(node, SecureSum):
        raise FlagError(f"--combiners: sums a SecureSum in two levels; this run's aggregator "
                        f"({config.fedavg.aggregator.kind!r}) has none (add --secure; --dp distributed and "
                        f"--aggregator rules have their own sessions)")
    try:
        node = HierarchicalSecureSum(combiners=m, secure=node)
    except ConfigError as exc:
        raise FlagError(f"--combiners: {exc}") from exc
    for wrapper in reversed(outer):
        node = dataclasses.replace(wrapper, inner=node)  # type: ignore[type-var]
    return _with(config, ("fedavg", "aggregator"), node)


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
                inner = secure if args.secure_range is not None else dataclasses.replace(
                    secure, value_range=clip * (1.0 + 6.0 * z))
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
    if secure is not None and rule in NOT_ON_SECURE_BUCKETS:
        raise FlagError(f"--secure: --aggregator {rule} cannot run on secure bucket sums ("
                        + ("it weighs each client's own update against the server's root-data update"
                           if rule == "fltrust" else "it keeps a history per client, and a bucket is not "
                           "a client") + "); drop --secure or pick another rule")

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
