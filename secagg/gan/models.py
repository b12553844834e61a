"""The federated GAN: one module holding a generator and a discriminator, federated as one vector.

:class:`GANPair` is an ordinary ``nn.Module`` whose trainable parameters are its ``generator``'s
followed by its ``discriminator``'s (``named_parameters()`` order), so
:class:`~secagg.layout.ParamLayout` flattens both into one update vector and every aggregator
(secure sums, robust rules, DP) applies to the pair unchanged. :func:`generator_slice` and
:func:`discriminator_slice` say which coordinates of that vector belong to which half.

Both networks are small MLPs (2 cores, 8x8 digits): the generator maps a latent ``z`` (standard
normal, ``latent_dim`` coordinates) to ``data_shape`` pixels through a sigmoid, so its samples lie in
(0, 1), the value range of the bundled digits (:mod:`secagg.data.digits` scales 0..16 to [0, 1]); the
discriminator maps an image to one logit (real > 0). A pair is not a classifier: its ``forward``
refuses, so a run that trains it with plain SGD (or a rule that trains a root update with it) fails
with a message naming the trainer to use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secagg.errors import ConfigError
from secagg.layout import ParamLayout
from secagg.validation import check_int


def _features(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))


class Generator(nn.Module):
    """``z`` (n, latent_dim) -> images (n, *data_shape) in (0, 1): MLP with ReLU, sigmoid output."""

    def __init__(self, latent_dim: int, data_shape: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.data_shape = tuple(data_shape)
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, _features(self.data_shape)), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(z.shape[0], *self.data_shape)


class Discriminator(nn.Module):
    """Images (n, *data_shape) -> logits (n,) (real: positive): MLP with LeakyReLU(0.2)."""

    def __init__(self, data_shape: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(_features(tuple(data_shape)), hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class GANPair(nn.Module):
    """A generator and a discriminator for images of ``data_shape``, as one federated model.

    ``latent_dim``: size of the generator's standard-normal input. ``hidden``: width of both MLPs'
    two hidden layers. With the defaults on digits (1, 8, 8): 16 -> 128 -> 128 -> 64 pixels and
    64 -> 128 -> 128 -> 1, 51,905 parameters in all (one update vector). Initialise it under a
    seeded torch RNG (as :func:`secagg.models.build_model` asks).

    ``evaluation``: an optional :class:`secagg.gan.task.GANEvaluation` that :meth:`evaluate_state` and
    :meth:`write_artifacts` delegate to; kept as a plain attribute, never a submodule, so it is not
    part of the state dict and never federated.
    """

    def __init__(self, data_shape: tuple[int, ...] = (1, 8, 8), *, latent_dim: int = 16,
                 hidden: int = 128) -> None:
        super().__init__()
        check_int("latent_dim", latent_dim, minimum=1)
        check_int("hidden", hidden, minimum=1)
        self.data_shape = tuple(int(s) for s in data_shape)
        self.latent_dim = latent_dim
        self.generator = Generator(latent_dim, self.data_shape, hidden)
        self.discriminator = Discriminator(self.data_shape, hidden)
        self.evaluation: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ConfigError("trainer: a GANPair is not a classifier; train it with the 'gan' trainer "
                          "(secagg.gan.GANTrainer, what secagg train --task gan sets), not plain SGD")

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` images from latents drawn from ``generator`` (no gradient)."""
        with torch.no_grad():
            return self.generator(torch.randn(n, self.latent_dim, generator=generator))

    def evaluate_state(self, state_dict: dict[str, torch.Tensor], x: torch.Tensor,
                       y: torch.Tensor) -> dict[str, float]:
        """The metrics of the pair loaded with ``state_dict`` against the held-out ``(x, y)``: what
        :func:`secagg.fedavg.server.evaluate` records each round for a model that brings its own
        evaluation. :class:`ConfigError` when no ``evaluation`` was attached."""
        if self.evaluation is None:
            raise ConfigError("evaluation: this GANPair has no evaluation attached (build it with "
                              "secagg.gan.build_gan_task, or attach a secagg.gan.GANEvaluation)")
        return dict(self.evaluation.evaluate(self, state_dict, x, y))

    def write_artifacts(self, state_dict: dict[str, torch.Tensor], out_dir: str | Path, round_index: int,
                        history: list[dict[str, Any]], *, final: bool = False) -> list[Path]:
        """The run folder's image grids and metric curves (see
        :meth:`secagg.gan.task.GANEvaluation.write_artifacts`; nothing without an evaluation), which
        :func:`secagg.experiment.run_rounds` asks for after every round."""
        if self.evaluation is None:
            return []
        return list(self.evaluation.write_artifacts(self, state_dict, out_dir, round_index, history,
                                                    final=final))


def _half_slice(layout: ParamLayout, prefix: str) -> slice:
    specs = [s for s in layout.specs if s.kind == "parameter" and s.name.startswith(prefix)]
    if not specs:
        raise ConfigError(f"layout: no parameter named {prefix}* (not a GANPair's layout)")
    start, stop = specs[0].offset, specs[-1].offset + specs[-1].numel
    if sum(s.numel for s in specs) != stop - start:
        raise ConfigError(f"layout: the {prefix}* parameters are not contiguous")
    return slice(start, stop)


def generator_slice(layout: ParamLayout) -> slice:
    """The coordinates of a :class:`GANPair`'s update vector that hold the generator."""
    return _half_slice(layout, "generator.")


def discriminator_slice(layout: ParamLayout) -> slice:
    """The coordinates of a :class:`GANPair`'s update vector that hold the discriminator."""
    return _half_slice(layout, "discriminator.")
