"""Data-poisoning attacks: malicious clients train on poisoned data and otherwise follow the protocol.

A data attack is a registered plug-in value (family ``"data-attack"``) that rewrites a malicious
client's local examples before it trains (told the client's rank among the attackers, for attacks
that split the work: :class:`~attacks.backdoors.DistributedBackdoor`), and may report per-round
metrics. :class:`Backdoor` measures its success on the test set (the fraction of triggered inputs,
not already of the target class, that the model classifies as the target). Model replacement
(Bagdasaryan et al. 2020) is the backdoor plus the update boost of :class:`ModelReplacement`, an update
attack applied to the backdoored update.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch

from attacks.base import AttackContext, UpdateAttack
from secagg.data.federated import ClientData
from secagg.errors import ConfigError
from secagg.fedavg.adversary import Predict
from secagg.registry import Registered
from secagg.seeding import torch_generator
from secagg.validation import check_choice, check_int, check_real


class DataAttack(Registered, ABC, family="data-attack"):
    """Base class of data-poisoning attacks (frozen dataclasses declared with ``kind="..."``)."""

    @abstractmethod
    def poison(self, data: ClientData, num_classes: int, seed: int, *, attacker: int = 0) -> ClientData:
        """The malicious client's poisoned examples (new tensors; ``data`` is not modified).
        ``attacker``: the client's rank among the run's malicious clients (0-based), for attacks that
        split their work among the attackers (:class:`~attacks.backdoors.DistributedBackdoor`); the
        others ignore it. Subclasses written before it existed (``poison(data, num_classes, seed)``)
        keep working: :class:`~attacks.byzantine.ByzantineClients` passes it only to those that take it."""

    def metrics(self, predict: Predict, test_x: torch.Tensor, test_y: torch.Tensor) -> dict[str, float]:
        """Per-round measurements on the test set with the new global model (``predict`` maps inputs to
        labels); default none. Backdoors log ``attack_success``."""
        return {}


def takes_attacker(poison: Callable[..., ClientData]) -> bool:
    """Whether a ``poison`` method accepts the ``attacker`` keyword (older data attacks do not)."""
    return "attacker" in inspect.signature(poison).parameters


@dataclass(frozen=True)
class LabelFlip(DataAttack, kind="label-flip"):
    """Label flipping (Biggio et al. 2012; Tolpegin et al. 2020).

    ``mode="permutation"``: every label ``y`` becomes ``num_classes - 1 - y`` (a fixed permutation).
    ``mode="targeted"``: only examples of class ``source`` are relabelled ``target``.
    """

    mode: str = "permutation"
    source: int = 1
    target: int = 7

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, ("permutation", "targeted"))
        check_int("source", self.source, minimum=0)
        check_int("target", self.target, minimum=0)
        if self.mode == "targeted" and self.source == self.target:
            raise ConfigError(f"target: must differ from source, both are {self.source}")

    def poison(self, data: ClientData, num_classes: int, seed: int, *, attacker: int = 0) -> ClientData:
        if self.mode == "permutation":
            return ClientData(data.x.clone(), num_classes - 1 - data.y)
        if max(self.source, self.target) >= num_classes:
            raise ConfigError(f"source, target: must be < num_classes = {num_classes}, got "
                              f"{self.source}, {self.target}")
        y = data.y.clone()
        y[y == self.source] = self.target
        return ClientData(data.x.clone(), y)


#: where :class:`Backdoor` stamps its trigger square
TRIGGER_POSITIONS = ("corner", "center")


@dataclass(frozen=True)
class Backdoor(DataAttack, kind="backdoor"):
    """A pixel-trigger backdoor (Gu et al. 2017's BadNets; the FL setting of Bagdasaryan et al. 2020).

    The trigger sets a ``size`` x ``size`` square of pixels of every channel to ``value``, placed
    by ``position``:

    * ``"corner"`` (default): the bottom-right corner (rows and columns ``h - size .. h - 1`` and
      ``w - size .. w - 1``), where BadNets puts its MNIST pattern. On digit data sets (MNIST,
      scikit-learn's digits) these pixels are blank in nearly every clean image, so honest
      clients' first-layer weights on them get (almost) no gradient.
    * ``"center"``: the middle of the image (rows ``(h - size) // 2`` onwards, columns
      ``(w - size) // 2`` onwards, ``size`` of each), on pixels that carry ink in most clean digit
      images, as a trigger on natural images (CIFAR-10, histology) always does.

    A malicious client adds ``fraction`` x (its examples) triggered copies of its own examples,
    relabelled ``target``, to its clean data (so its model stays accurate on clean inputs, which
    keeps the attack stealthy). Copies are drawn from the seed (simulation randomness).
    :class:`ConfigError` names the field for a bad ``target``, ``fraction``, ``size``, ``value`` or
    ``position``, and ``size`` for images smaller than the trigger.
    """

    target: int = 0
    fraction: float = 0.5
    size: int = 2
    value: float = 1.0
    position: str = "corner"

    def __post_init__(self) -> None:
        check_int("target", self.target, minimum=0)
        check_real("fraction", self.fraction, gt=0.0, le=10.0)
        check_int("size", self.size, minimum=1)
        check_real("value", self.value)
        check_choice("position", self.position, TRIGGER_POSITIONS)

    def trigger_window(self, height: int, width: int) -> tuple[slice, slice]:
        """The (rows, columns) slices of the trigger square in a ``height`` x ``width`` image (see
        ``position``); the image must be at least ``size`` x ``size``."""
        if self.position == "corner":
            return slice(height - self.size, height), slice(width - self.size, width)
        top, left = (height - self.size) // 2, (width - self.size) // 2
        return slice(top, top + self.size), slice(left, left + self.size)

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (n, channels, height, width) with the trigger stamped on (a new tensor)."""
        if x.dim() != 4:
            raise ConfigError(f"backdoor: the pixel trigger needs images (n, c, h, w), got shape "
                              f"{tuple(x.shape)} (a table's rows have no pixels to stamp)")
        if x.shape[-1] < self.size or x.shape[-2] < self.size:
            raise ConfigError(f"size: the {self.size}x{self.size} trigger needs images (n, c, h, w) with "
                              f"h, w >= {self.size}, got shape {tuple(x.shape)}")
        rows, cols = self.trigger_window(x.shape[-2], x.shape[-1])
        out = x.clone()
        out[..., rows, cols] = self.value
        return out

    def poison(self, data: ClientData, num_classes: int, seed: int, *, attacker: int = 0) -> ClientData:
        return add_triggered_copies(data, self.apply_trigger, self.target, self.fraction, num_classes, seed)

    def success_rate(self, predict: torch.Tensor, test_y: torch.Tensor) -> float:
        """Attack success: among test examples whose true class is not ``target``, the fraction whose
        triggered version is predicted as ``target``. ``predict``: predicted labels of the triggered
        test inputs (see :meth:`apply_trigger`)."""
        return targeted_success(predict, test_y, self.target)

    def metrics(self, predict: Predict, test_x: torch.Tensor, test_y: torch.Tensor) -> dict[str, float]:
        """``attack_success``: :meth:`success_rate` of the model on the triggered test set."""
        return {"attack_success": self.success_rate(predict(self.apply_trigger(test_x)), test_y)}


def targeted_success(predict: torch.Tensor, test_y: torch.Tensor, target: int) -> float:
    """Among test examples whose true class is not ``target``, the fraction predicted as ``target``
    (``predict``: the labels predicted for their triggered versions)."""
    keep = test_y != target
    if not bool(keep.any()):
        raise ConfigError(f"target: every test example is of class {target}")
    return float((predict[keep] == target).double().mean())


def add_triggered_copies(data: ClientData, stamp: Callable[[torch.Tensor], torch.Tensor], target: int,
                         fraction: float, num_classes: int, seed: int) -> ClientData:
    """``data`` plus ``max(1, round(fraction * n))`` of its examples, drawn with replacement from
    ``seed`` (simulation randomness), stamped by ``stamp`` and relabelled ``target``."""
    if target >= num_classes:
        raise ConfigError(f"target: must be < num_classes = {num_classes}, got {target}")
    n = len(data)
    count = max(1, round(fraction * n))
    idx = torch.randint(n, (count,), generator=torch_generator(seed, "backdoor-copies"))
    x = torch.cat([data.x, stamp(data.x[idx])])
    y = torch.cat([data.y, torch.full((count,), target, dtype=data.y.dtype)])
    return ClientData(x, y)


@dataclass(frozen=True)
class ModelReplacement(UpdateAttack, kind="model-replacement"):
    """Model replacement (Bagdasaryan et al., AISTATS 2020): the attackers scale their own (backdoored)
    updates by ``boost`` so that the server's step lands on their model.

    The server steps by ``eta * sum_i s_i u_i`` with shares ``s_i = w_i / sum(w)``. When the honest
    updates cancel (the paper's assumption near convergence), attackers holding the combined share
    ``S`` who all boost by ``1 / (eta * S)`` move the global model by exactly their ``w``-weighted
    mean own update: they replace it. ``boost=None`` uses that value for the round:
    ``sum(w) / (eta * sum of the attackers' w)`` with ``w`` the example counts (``ctx.weights``),
    which FedAvg's default example-weighted ``Mean()`` uses; with ``weighted=False`` (against an
    unweighted rule: ``Mean(weighted=False)``, DP-FedAvg, the robust rules) or unknown counts, every
    ``w_i = 1`` and it is the paper's ``n / (eta * f)`` (f = 1: ``n / eta``). ``server_lr``: eta,
    the server learning rate the attackers assume. Not omniscient.
    """

    boost: float | None = None
    server_lr: float = 1.0
    weighted: bool = True
    omniscient = False

    def __post_init__(self) -> None:
        if self.boost is not None:
            check_real("boost", self.boost, gt=0.0)
        check_real("server_lr", self.server_lr, gt=0.0)
        if not isinstance(self.weighted, bool):
            raise ConfigError(f"weighted: must be true or false, got {self.weighted!r}")

    def default_boost(self, ctx: AttackContext) -> float:
        """The replacing boost ``sum(w) / (server_lr * sum of the attackers' w)`` for ``ctx``'s round
        (see the class); :class:`ConfigError` if the attackers' weights sum to 0."""
        if self.weighted and ctx.weights is not None:
            w = ctx.weights.double()
            total, mine = float(w.sum()), float(w[ctx.honest.shape[0]:].sum())
        else:  # as a ratio of counts, so that the paper's n / (eta f) comes out to the last bit
            total, mine = float(ctx.num_clients), float(ctx.num_attackers)
        if mine <= 0.0:
            raise ConfigError(f"weights: the attackers' weights must sum to > 0 to replace the model, "
                              f"got {mine:g}")
        return total / (self.server_lr * mine)

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        return (self.default_boost(ctx) if self.boost is None else self.boost) * ctx.own
