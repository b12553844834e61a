"""Small models for the bundled federated tasks, and a registry to build them by name.

Any ``torch.nn.Module`` works with the FedAvg core; these are the defaults for digits (8x8 images,
10 classes) and work on any (channels, height, width) input: MNIST-like 28x28x1, CIFAR-10's 32x32x3,
MedMNIST's colour sets. ``tabular`` and ``logistic`` are the small models for tables such as
breast-cancer's (n, 30) rows (they flatten any input, as ``mlp`` does; ``cnn`` needs images).
Register your own with :func:`register_model`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from secagg.errors import ConfigError
from secagg.validation import check_choice

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]
_MODELS: dict[str, ModelFactory] = {}


def register_model(name: str, factory: ModelFactory) -> None:
    """Make ``factory(input_shape, num_classes)`` buildable as ``model=name``."""
    if name in _MODELS:
        raise ConfigError(f"model: {name!r} is already registered")
    _MODELS[name] = factory


def model_names() -> tuple[str, ...]:
    return tuple(sorted(_MODELS))


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised model (uses torch's global RNG: seed it, or fork it, around the call)."""
    check_choice("model", name, model_names())
    return _MODELS[name](tuple(input_shape), num_classes)


class MLP(nn.Module):
    """Flatten -> Linear(hidden) -> ReLU -> Linear(num_classes); ``batchnorm=True`` puts a
    BatchNorm1d between the hidden Linear and the ReLU (``mlp-bn``: the small model FedBN needs)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 64,
                 batchnorm: bool = False) -> None:
        super().__init__()
        features = 1
        for s in input_shape:
            features *= s
        norm = [nn.BatchNorm1d(hidden)] if batchnorm else []
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), *norm, nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Tabular(MLP):
    """The :class:`MLP` sized for tabular rows: Flatten -> Linear(features, hidden) -> ReLU ->
    Linear(num_classes), ``hidden=16`` by default.

    With breast-cancer's 30 features: 30 -> 16 -> 2, 530 parameters.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 16) -> None:
        super().__init__(input_shape, num_classes, hidden)


class Logistic(nn.Module):
    """Multinomial logistic regression: Flatten -> Linear(features, num_classes) (logits; the training
    loss applies the softmax). Breast-cancer: 30 -> 2, 62 parameters."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        features = 1
        for s in input_shape:
            features *= s
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Two 3x3 conv layers (16, 32 channels), 2x2 max-pool, then a linear classifier.

    Inputs larger than 16x16 are max-pooled further (2x2 at a time) until the feature map is at most
    8x8 (28x28 -> 7x7, 32x32 -> 8x8), which keeps the classifier, and so the update every client
    sends, small; digits (8x8) gets the single pool and the parameter count it always had.
    ``batchnorm=True`` adds BatchNorm after each conv: its running statistics are buffers, handled by
    the policy in :mod:`secagg.layout`.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int,
                 batchnorm: bool = False) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"model: cnn needs (channels, height, width) input, got {input_shape}")
        channels, height, width = input_shape

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if batchnorm else nn.Identity()

        height, width = height // 2, width // 2
        pools: list[nn.Module] = []
        while min(height, width) > 8:
            pools.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), norm(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), norm(32), nn.ReLU(),
            nn.MaxPool2d(2), *pools,
        )
        self.classifier = nn.Linear(32 * height * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


register_model("mlp", lambda shape, k: MLP(shape, k))
register_model("mlp-bn", lambda shape, k: MLP(shape, k, batchnorm=True))
register_model("cnn", lambda shape, k: CNN(shape, k))
register_model("cnn-bn", lambda shape, k: CNN(shape, k, batchnorm=True))
register_model("tabular", lambda shape, k: Tabular(shape, k))
register_model("logistic", lambda shape, k: Logistic(shape, k))
