"""Record-level DP-SGD inside local training (Abadi et al. 2016), through Opacus.

:class:`DPSGDTrainer` is a :class:`~secagg.fedavg.trainer.ClientTrainer`: each sampled client trains
its copy of the global model with per-example gradient clipping (L2 norm ``max_grad_norm``) and
Gaussian noise (standard deviation ``noise_multiplier * max_grad_norm`` on the summed clipped
gradients), on batches drawn by Poisson sampling. The guarantee is *record-level* and *per client*:
it protects one example of one client's local data, across every round that client takes part in.

Sampling and accounting follow Opacus exactly (see :func:`poisson_schedule`): for a client with
``n`` examples and batch size ``B`` the loader includes each example in a step with probability
``q = 1 / ceil(n / B)`` (1 for full batch, ``B = 0``), an epoch is ``steps = int(1 / q)`` steps, and
the accountant is charged at rate ``1 / steps``, as Opacus's ``PrivacyEngine`` charges it (equal to
``q``, or slightly above it where floating point drops a step: conservative). The server
keeps no Opacus objects: :meth:`DPSGDTrainer.epsilon_after` rebuilds one accountant per client from
``(noise_multiplier, 1 / steps, participations * epochs * steps)``, a pure function of the run's
configuration and participation counts, so it survives checkpoint/resume.

FedProx (``client.proximal_mu`` = mu > 0) composes with DP-SGD: the proximal term's gradient
``mu (w - w_global)`` depends only on the current local weights and the global model, never on a
record, so it is added after Opacus has clipped the per-example gradients and noised their sum (between
``DPOptimizer.pre_step`` and the inner optimizer's step, where weight decay is applied too). Adding a
data-independent term to the privatized gradient is post-processing: the noise multiplier, the sampling
and so the accountant's epsilon are exactly those without it.

Only the update vector is covered by the guarantee. ``ClientUpdate.train_loss`` (the mean loss of the
local DP steps, a diagnostic) is computed from the client's data without noise.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from secagg.data.federated import ClientData
from secagg.errors import ConfigError, DataError, UpdateError
from secagg.fedavg.client import ClientUpdate, add_proximal_gradient, proximal_anchors
from secagg.fedavg.trainer import ClientTrainer
from secagg.layout import ParamLayout
from secagg.seeding import derive_seed
from secagg.validation import check_choice, check_int, check_real

if TYPE_CHECKING:
    from opacus.accountants import IAccountant  # opacus itself is imported where it is used (slow import)

    from secagg.fedavg.config import ClientConfig

__all__ = ["DPSGD_ACCOUNTANTS", "SECURE_MODE_UNAVAILABLE", "DPSGDTrainer", "dpsgd_epsilon",
           "poisson_schedule"]

DPSGD_ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")

#: Why ``secure_mode=True`` is refused (also stated in :class:`DPSGDTrainer`'s docstring).
SECURE_MODE_UNAVAILABLE = (
    "secure_mode: not available. Opacus's secure mode draws noise and batches from a CSPRNG provided "
    "by the torchcsprng package, whose last release (0.2.1, 2021) has no build for Python 3.11 or "
    "torch 2.x. DPSGDTrainer therefore draws its noise from torch's seeded (non-cryptographic) "
    "generator: results are reproducible, but the DP guarantee holds only against an adversary who "
    "does not know the run's seed; this is a simulation of DP-SGD, not a deployable guarantee")


def poisson_schedule(num_examples: int, batch_size: int) -> tuple[float, int, float]:
    """``(sample_rate, steps_per_epoch, accounted_rate)`` of Opacus's Poisson DP-SGD for ``num_examples``.

    Opacus turns a ``DataLoader(batch_size=B)`` into Poisson sampling at ``sample_rate = 1 / ceil(n /
    B)`` (at most ``B / n``) for ``int(1 / sample_rate)`` steps per epoch; floating point makes that
    ``ceil(n / B) - 1`` for some sizes (93 batches give 92 steps). Its ``PrivacyEngine`` then charges
    the accountant at ``accounted_rate = 1 / steps_per_epoch`` (>= ``sample_rate``: conservative).
    ``batch_size=0`` (full batch) and ``batch_size >= n`` give rates 1 and one step per epoch.
    """
    n = check_int("examples", num_examples, minimum=1)
    b = check_int("client.batch_size", batch_size, minimum=0)
    batches = 1 if b == 0 else math.ceil(n / b)
    rate = 1 / batches
    steps = int(1 / rate)
    return rate, steps, 1 / steps


def _accountant(kind: str) -> IAccountant:
    from opacus.accountants import PRVAccountant, RDPAccountant

    return RDPAccountant() if kind == "rdp" else PRVAccountant()


def _epsilon(kind: str, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    accountant = _accountant(kind)
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta=delta))


def dpsgd_epsilon(trainer: DPSGDTrainer, client_config_batch_size: int, epochs: int,
                  examples: Mapping[int, int], participations: Mapping[int, int]) -> float:
    """Record-level epsilon (at ``trainer.delta``) of the most exposed client.

    Client ``c`` took part in ``participations[c]`` rounds of ``epochs`` local epochs each over its
    ``examples[c]`` examples with batch size ``client_config_batch_size`` (0 = full batch). Each
    client's epsilon comes from a fresh accountant of ``trainer.accountant`` kind; the result is the
    maximum over clients (0.0 if nobody took part).
    """
    if not isinstance(trainer, DPSGDTrainer):
        raise ConfigError(f"trainer: expected a DPSGDTrainer, got {type(trainer).__name__}")
    check_int("client.batch_size", client_config_batch_size, minimum=0)
    check_int("client.epochs", epochs, minimum=1)
    # epsilon grows with the step count at a fixed rate, so per rate only the most exposed client
    # needs an accountant: one call per distinct rate instead of one per client schedule
    most_steps: dict[float, int] = {}
    for c, rounds in participations.items():
        check_int(f"participations[{c}]", rounds, minimum=0)
        if rounds == 0:
            continue
        if c not in examples:
            raise ConfigError(f"examples: no example count for client {c}, which took part "
                              f"in {rounds} round(s)")
        _, steps, rate = poisson_schedule(examples[c], client_config_batch_size)
        most_steps[rate] = max(most_steps.get(rate, 0), rounds * epochs * steps)
    return max((_epsilon(trainer.accountant, trainer.noise_multiplier, rate, steps, trainer.delta)
                for rate, steps in most_steps.items()), default=0.0)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _opacus_compatible(model: nn.Module) -> nn.Module:
    """``model`` itself if Opacus can compute its per-example gradients, else a fixed copy with the
    same state-dict layout; a :class:`ConfigError` naming the modules otherwise."""
    from opacus.validators import ModuleValidator

    problems = ModuleValidator.validate(model, strict=False)
    if not problems:
        return model
    listed = "; ".join(str(p) for p in problems)
    try:
        fixed = ModuleValidator.fix(model)
    except Exception as exc:  # Opacus raises assorted types for modules it cannot replace
        raise ConfigError(f"model: not compatible with DP-SGD and not fixable ({listed})") from exc
    remaining = ModuleValidator.validate(fixed, strict=False)
    if remaining:
        raise ConfigError(f"model: not compatible with DP-SGD ({'; '.join(str(p) for p in remaining)})")
    if _shapes(fixed) != _shapes(model):
        raise ConfigError(
            f"model: DP-SGD cannot train this model as is ({listed}). Opacus would replace those "
            f"modules (BatchNorm -> GroupNorm), which changes the architecture the server aggregates "
            f"and evaluates; pick a model without BatchNorm for DP-SGD (e.g. 'cnn' instead of 'cnn-bn')")
    return fixed


@dataclass(frozen=True)
class DPSGDTrainer(ClientTrainer, kind="dpsgd"):
    """Local training with record-level DP-SGD (per-example clipping + Gaussian noise, Poisson batches).

    ``noise_multiplier`` is the noise standard deviation over ``max_grad_norm`` (the per-example L2
    clip bound); ``delta`` the target delta; ``accountant`` ``"rdp"`` or ``"prv"`` (always explicit,
    never Opacus's default); ``target_epsilon`` the record-level budget no client may exceed
    (returned by :meth:`privacy_budget`; enforcing it is the caller's job). ``batch_size`` and
    ``epochs`` must equal ``client.batch_size`` and ``client.epochs``: the server accounts privacy
    from them alone (:meth:`epsilon_after`), so :meth:`train` refuses a mismatch.

    FedProx (``client.proximal_mu > 0``) is supported: its gradient is added after clipping and noise
    (see the module docstring), so the accounting is the same as without it.

    Models: Opacus needs per-example gradients. A model Opacus can only support by swapping modules
    (BatchNorm -> GroupNorm) is refused, because the swap changes the state-dict layout the server
    aggregates and evaluates: use a model without BatchNorm (``cnn`` instead of ``cnn-bn``).

    Limitation (randomness): the noise and the Poisson batches come from torch's seeded,
    non-cryptographic generators, derived from ``seed``, so runs are reproducible bit for bit. Opacus's
    ``secure_mode=True`` (CSPRNG noise) needs the ``torchcsprng`` package, whose last release (0.2.1,
    2021) has no build for Python 3.11 or torch 2.x, so it is not offered (``secure_mode=True`` raises
    :class:`ConfigError`). Anyone who knows the seed can reproduce, and so subtract, the noise: the
    epsilon reported holds only against an adversary who does not know the run's seed. Treat this as
    a faithful simulation of DP-SGD for research, not a deployable guarantee.
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float = 1e-5
    accountant: str = "rdp"
    target_epsilon: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    secure_mode: bool = False

    def __post_init__(self) -> None:
        check_real("trainer.noise_multiplier", self.noise_multiplier, gt=0.0)
        check_real("trainer.max_grad_norm", self.max_grad_norm, gt=0.0)
        check_real("trainer.delta", self.delta, gt=0.0, lt=1.0)
        check_choice("trainer.accountant", self.accountant, DPSGD_ACCOUNTANTS)
        if self.target_epsilon is not None:
            check_real("trainer.target_epsilon", self.target_epsilon, gt=0.0)
        if self.batch_size is not None:
            check_int("trainer.batch_size", self.batch_size, minimum=0)
        if self.epochs is not None:
            check_int("trainer.epochs", self.epochs, minimum=1)
        if not isinstance(self.secure_mode, bool):
            raise ConfigError(f"trainer.secure_mode: must be a bool, got {self.secure_mode!r}")
        if self.secure_mode:
            raise ConfigError(SECURE_MODE_UNAVAILABLE)

    def _schedule(self) -> tuple[int, int]:
        if self.batch_size is None or self.epochs is None:
            missing = "batch_size" if self.batch_size is None else "epochs"
            raise ConfigError(f"trainer.{missing}: must be set (equal to client.{missing}) so that the "
                              f"server can account DP-SGD's privacy")
        return self.batch_size, self.epochs

    def _check_client(self, config: ClientConfig) -> None:
        batch_size, epochs = self._schedule()
        if (batch_size, epochs) != (config.batch_size, config.epochs):
            raise ConfigError(f"trainer.batch_size/epochs: must equal client.batch_size/epochs "
                              f"({config.batch_size}/{config.epochs}), got {batch_size}/{epochs}")

    def train(self, model: nn.Module, global_state: Mapping[str, torch.Tensor], data: ClientData,
              config: ClientConfig, layout: ParamLayout, *, seed: int, client_id: int) -> ClientUpdate:
        """DP-SGD on a copy of ``model`` loaded with ``global_state``; returns the delta in ``layout``.

        Pure like :func:`~secagg.fedavg.client.client_update`: neither ``model`` nor ``global_state``
        is modified, torch's global RNG is forked, and the same ``seed`` gives the same update. A
        fresh ``PrivacyEngine`` is built per call. Raises :class:`UpdateError` on NaN/Inf.
        """
        self._check_client(config)
        n = len(data)
        if n == 0:
            raise DataError(f"client {client_id}: has no examples")
        rate, steps, charged_rate = poisson_schedule(n, config.batch_size)
        local = copy.deepcopy(model)
        local.load_state_dict(global_state, strict=True)
        local = _opacus_compatible(local)
        local.train()
        anchors = proximal_anchors(local, config.proximal_mu)  # w_global, before any step
        opt = torch.optim.SGD(local.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
        loader = DataLoader(TensorDataset(data.x, data.y), batch_size=n if config.batch_size == 0
                            else config.batch_size,
                            generator=torch.Generator().manual_seed(derive_seed(seed, "dpsgd", "sample")))
        noise = torch.Generator().manual_seed(derive_seed(seed, "dpsgd", "noise"))
        losses = []
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.manual_seed(seed)
            warnings.filterwarnings("ignore", message="Secure RNG turned off")  # documented above
            warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus's hooks
            from opacus import PrivacyEngine

            engine = PrivacyEngine(accountant=self.accountant, secure_mode=False)
            private, dp_opt, dp_loader = engine.make_private(
                module=local, optimizer=opt, data_loader=loader, noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.max_grad_norm, poisson_sampling=True, noise_generator=noise)
            if (dp_loader.sample_rate, len(dp_loader)) != (rate, steps):
                raise RuntimeError(f"Opacus sampled at rate {dp_loader.sample_rate} for {len(dp_loader)} "
                                   f"steps; accounting assumes {rate} for {steps}")
            for _ in range(config.epochs):
                for xb, yb in dp_loader:
                    dp_opt.zero_grad(set_to_none=True)
                    if len(yb) > 0:  # an empty Poisson batch still takes a (pure-noise) step
                        loss = nn.functional.cross_entropy(private(xb), yb)
                        loss.backward()
                        losses.append(loss.detach())
                    else:
                        private(xb).sum().backward()
                    if not anchors:
                        dp_opt.step()
                    elif dp_opt.pre_step():  # clipped, noised, averaged, accounted: now p.grad is private
                        add_proximal_gradient(anchors, config.proximal_mu)  # data-independent
                        dp_opt.original_optimizer.step()
        charged = [(self.noise_multiplier, charged_rate, config.epochs * steps)]
        if engine.accountant.history != charged:  # what the server will account, step for step
            raise RuntimeError(f"Opacus charged {engine.accountant.history}; accounting assumes {charged}")
        trained = private._module
        delta = layout.flatten(trained.state_dict()) - layout.flatten(global_state)
        if not torch.isfinite(delta).all():
            raise UpdateError(f"client {client_id}: DP-SGD produced NaN/Inf "
                              f"(lower client.lr, currently {config.lr})")
        train_loss = float(torch.stack(losses).mean()) if losses else 0.0
        return ClientUpdate(client_id, delta, n, train_loss)

    def epsilon_after(self, participations: Mapping[int, int], examples: Mapping[int, int]) -> float:
        """Record-level epsilon at :attr:`delta` of the most exposed client (see :func:`dpsgd_epsilon`)."""
        batch_size, epochs = self._schedule()
        return dpsgd_epsilon(self, batch_size, epochs, examples, participations)

    def privacy_budget(self) -> float | None:
        return self.target_epsilon
