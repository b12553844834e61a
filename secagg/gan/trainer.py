"""Local training of a federated GAN: the ``"gan"`` client trainer.

Each sampled client receives the global :class:`~secagg.gan.models.GANPair` and runs ``steps``
local iterations, each (1) a discriminator step on a batch of its own images (real) against as many
generated ones (fake), with the standard GAN loss ``softplus(-D(real)) + softplus(D(fake))``, then
(2) a generator step with the non-saturating loss ``softplus(-D(G(z)))`` (Goodfellow et al. 2014).
Its update is the change of the whole pair (generator and discriminator halves, one vector), so it
goes through the run's aggregator (secure sum, robust rule, DP) like any other model's update.

Which discriminator the generator trains against (``generator_target``):

* ``"local"`` (default): the client's locally updated discriminator, the usual alternating GAN step.
  It has seen the client's images, so the generator's half depends on them too; client-level DP still
  covers it (below).
* ``"global"``: the round's global discriminator as received, frozen. The generator's half of the
  update is then a function of public values only (the global pair, the client's training seed, the
  trainer's settings), never of the client's images: "only the discriminator touches real data", as
  in DP-FedAvg-GAN (Augenstein et al., "Generative Models for Effective ML on Private, Decentralized
  Datasets", ICLR 2020), where the server trains the generator against the aggregated
  discriminator; here each client does that public computation with its own latent draws, so both
  halves travel in one update vector. It is not the default because it does not train on digits:
  the generator chases a discriminator that is ``steps`` updates stale and collapses (1-2 modes
  after 200 rounds where ``"local"`` covers 9; one party, 3,000 steps, a discriminator 10 steps
  stale: 2 modes, current: 9-10; see ``benchmarks/fedgan_digits.py``).

Privacy (client-level DP). The client-level DP aggregators (``dp.central.DPFedAvg``,
``dp.adaptive.AdaptiveClipDP``, ``dp.local.LocalDP``, ``dp.distributed.DistributedDP``; ``secagg train
--dp central|adaptive|local|distributed``) clip and noise the *whole* update vector, discriminator and
generator halves together. Adding or removing one client changes the pre-noise sum by that client's
whole clipped vector, of L2 norm at most the clip C (local DP: replacing one client's release moves
it by at most 2C), whatever the vector holds and however its halves were computed: the sensitivity
the noise is calibrated to holds for both ``generator_target`` values, so the epsilon the accountant
prints is a valid client-level guarantee for every released global pair, and the released generator
(a part of it) is post-processing of a DP release. With ``"global"`` the generator's half carries no
information about the data at all and merely spends part of the clip norm; ``tests/test_fedgan.py``
checks the sensitivity from neighbouring inputs, for both targets. Record-level DP-SGD (``--dp
dpsgd``, Opacus) is not implemented for the GAN (the discriminator would need per-example clipping of
both its real and fake terms): the CLI refuses it, naming this trainer.

Determinism: like :func:`~secagg.fedavg.client.client_update`, :meth:`GANTrainer.train` is a pure
function of its arguments. The batch order, the discriminator's fake latents and the generator's
latents come from three :class:`torch.Generator` streams seeded from the client's ``seed``; torch's
global RNG is forked. Local work is counted in ``steps`` rather than epochs so that the generator's
half (``"global"``) does not even depend on how many examples the client holds; the client's
``batch_size`` is used (>= 1; a client with fewer examples uses them all in each discriminator
step), its ``epochs`` are not.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from secagg.data.federated import ClientData
from secagg.errors import ConfigError, DataError, UpdateError
from secagg.fedavg.client import ClientUpdate
from secagg.fedavg.trainer import ClientTrainer
from secagg.gan.models import GANPair
from secagg.layout import ParamLayout
from secagg.seeding import torch_generator
from secagg.validation import check_choice, check_int, check_real

if TYPE_CHECKING:
    from secagg.fedavg.config import ClientConfig

TARGETS = ("global", "local")
OPTIMIZERS = ("sgd", "adam")


def _batches(n: int, batch: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` index batches of ``batch`` examples, in shuffled passes over ``range(n)``."""
    out: list[torch.Tensor] = []
    order = torch.empty(0, dtype=torch.int64)
    while len(out) < steps:
        if order.numel() < batch:  # start a new pass; a short tail joins the next pass
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        out.append(order[:batch])
        order = order[batch:]
    return out


@dataclass(frozen=True)
class GANTrainer(ClientTrainer, kind="gan"):
    """Local GAN training of a :class:`~secagg.gan.models.GANPair` (see the module docstring).

    ``steps``: local iterations per round (>= 1), each one discriminator step then one generator step
    on ``client.batch_size`` examples and as many latents. ``generator_target``: ``"global"`` (train
    the generator against the received discriminator, frozen) or ``"local"`` (against the client's
    updated one). The discriminator's learning rate is ``client.lr``, the generator's
    ``generator_lr`` (``None``: ``client.lr``). ``optimizer``: ``"adam"`` (default;
    ``betas=(beta1, beta2)``; ``client.momentum`` and ``client.weight_decay`` must be 0) or ``"sgd"``
    (with ``client.momentum`` and ``client.weight_decay``). The optimizer is created fresh each round,
    as every FedAvg client's is, which is why the defaults are not DCGAN's ``(0.5, 0.999)``: measured
    on digits with one party, restarting that Adam every 10 steps dropped mode coverage after 2,000
    steps from 7-9 classes (never restarted, 3 seeds) to 3 (5 when restarted every 50), while
    ``beta1 = 0`` (no first moment to lose) with ``beta2 = 0.99`` (a second moment that warms up
    within a round), restarted every 10 steps, covered 9-10 after 3,000; plain SGD trained only in a
    narrow learning-rate band (lr 0.2 of 0.05, 0.1, 0.2, 0.3).
    """

    steps: int = 10
    generator_target: str = "local"
    generator_lr: float | None = None
    optimizer: str = "adam"
    beta1: float = 0.0
    beta2: float = 0.99

    def __post_init__(self) -> None:
        check_int("trainer.steps", self.steps, minimum=1)
        check_choice("trainer.generator_target", self.generator_target, TARGETS)
        if self.generator_lr is not None:
            check_real("trainer.generator_lr", self.generator_lr, gt=0.0)
        check_choice("trainer.optimizer", self.optimizer, OPTIMIZERS)
        check_real("trainer.beta1", self.beta1, ge=0.0, lt=1.0)
        check_real("trainer.beta2", self.beta2, ge=0.0, lt=1.0)

    def _optimizers(self, pair: GANPair, config: ClientConfig
                    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        g_lr = self.generator_lr or config.lr
        if self.optimizer == "sgd":
            kw = dict(momentum=config.momentum, weight_decay=config.weight_decay)
            return (torch.optim.SGD(pair.discriminator.parameters(), lr=config.lr, **kw),
                    torch.optim.SGD(pair.generator.parameters(), lr=g_lr, **kw))
        if config.momentum != 0.0 or config.weight_decay != 0.0:
            raise ConfigError(f"client.momentum, client.weight_decay: the 'gan' trainer's Adam takes "
                              f"neither (got {config.momentum}, {config.weight_decay}); must be 0")
        betas = (self.beta1, self.beta2)
        return (torch.optim.Adam(pair.discriminator.parameters(), lr=config.lr, betas=betas),
                torch.optim.Adam(pair.generator.parameters(), lr=g_lr, betas=betas))

    def train(self, model: nn.Module, global_state: Mapping[str, torch.Tensor], data: ClientData,
              config: ClientConfig, layout: ParamLayout, *, seed: int, client_id: int) -> ClientUpdate:
        if not isinstance(model, GANPair):
            raise ConfigError(f"trainer: 'gan' trains a secagg.gan.GANPair, got {type(model).__name__} "
                              f"(use --task gan)")
        if config.batch_size == 0:
            raise ConfigError("client.batch_size: the 'gan' trainer needs a batch size >= 1 (full batch, "
                              "0, would make the generator's batch depend on the client's data size)")
        n = len(data)
        if n == 0:
            raise DataError(f"client {client_id}: has no examples")
        local = copy.deepcopy(model)
        local.load_state_dict(global_state, strict=True)
        local.train()
        gen, disc = local.generator, local.discriminator
        if self.generator_target == "global":
            # frozen copy of the received discriminator: the generator's half sees no client data
            target = copy.deepcopy(disc)
            for p in target.parameters():
                p.requires_grad_(False)
        else:
            target = disc
        opt_d, opt_g = self._optimizers(local, config)
        batch, g_batch = min(config.batch_size, n), config.batch_size
        # three independent streams: the generator's latents never depend on the data's order or size
        order = torch_generator(seed, "gan-order")
        fake_noise = torch_generator(seed, "gan-d-latent")
        gen_noise = torch_generator(seed, "gan-g-latent")
        softplus = nn.functional.softplus
        losses = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for idx in _batches(n, batch, self.steps, order):
                real = data.x[idx]
                fake = gen(torch.randn(real.shape[0], local.latent_dim, generator=fake_noise)).detach()
                loss_d = softplus(-disc(real)).mean() + softplus(disc(fake)).mean()
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                z = torch.randn(g_batch, local.latent_dim, generator=gen_noise)
                loss_g = softplus(-target(gen(z))).mean()
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                losses.append(loss_d.detach())
        delta = layout.flatten(local.state_dict()) - layout.flatten(global_state)
        if not torch.isfinite(delta).all():
            raise UpdateError(f"client {client_id}: local GAN training produced NaN/Inf "
                              f"(lower client.lr, currently {config.lr})")
        return ClientUpdate(client_id, delta, n, float(torch.stack(losses).mean()))
