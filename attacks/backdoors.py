"""Backdoors that spread over attackers and over time: the distributed backdoor (DBA) and Neurotoxin.

:class:`DistributedBackdoor` (Xie, Huang, Chen and Li, "DBA: Distributed Backdoor Attacks against
Federated Learning", ICLR 2020) is a data attack: each attacker poisons with one part of a global
trigger, and success is measured with the whole trigger. :class:`Neurotoxin` (Zhang, Panda, Song,
Yang, Mahoney, Gonzalez, Ramchandran and Mittal, "Neurotoxin: Durable Backdoors in Federated
Learning", ICML 2022) is an update attack applied to a backdoored update (as
:class:`~attacks.data_poisoning.ModelReplacement` is): it keeps the backdoor off the coordinates the
benign clients update most, so that it survives after the attackers stop (see
:class:`~attacks.byzantine.ByzantineClients`' attack window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attacks.base import AttackContext, UpdateAttack
from attacks.data_poisoning import DataAttack, add_triggered_copies, targeted_success
from secagg.data.federated import ClientData
from secagg.errors import ConfigError
from secagg.fedavg.adversary import Predict
from secagg.fedavg.trainer import ClientTrainer, FrozenSGDTrainer
from secagg.validation import check_choice, check_int, check_real

PROJECTIONS = ("step", "update")

#: the corners, in the order of the local patterns: top-left, top-right, bottom-left, bottom-right
CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))


@dataclass(frozen=True)
class DistributedBackdoor(DataAttack, kind="dba"):
    """The distributed backdoor attack (DBA; Xie et al., ICLR 2020).

    The global trigger is ``parts`` local patterns; attacker i (its rank among the run's malicious
    clients, :meth:`poison`'s ``attacker``) poisons with local pattern ``i mod parts`` only, adding
    ``fraction`` x (its examples) copies of its own examples stamped with that pattern and relabelled
    ``target`` (as :class:`~attacks.data_poisoning.Backdoor`; the paper instead replaces a share of
    each batch). Success (``attack_success``, logged every round) is measured on the test set with
    the full global trigger: the union of the local patterns.

    Layout: local pattern k is a ``thickness`` x ``bar`` horizontal bar of pixels set to ``value`` in
    every channel, in corner k of the image (top-left, top-right, bottom-left, bottom-right; so
    ``parts <= 4``). The paper's MNIST trigger (its official config) is four 1 x 4 bars in a 2 x 2
    arrangement in the top-left corner (rows 0 and 3, columns 0-3 and 6-9), inside MNIST's blank
    border; scikit-learn's 8 x 8 digits have ink almost everywhere but the corners, so the default
    here is four 1 x 2 bars, one per corner (8 pixels that are blank in nearly every digit).
    """

    target: int = 0
    fraction: float = 0.5
    parts: int = 4
    bar: int = 2
    thickness: int = 1
    value: float = 1.0

    def __post_init__(self) -> None:
        check_int("target", self.target, minimum=0)
        check_real("fraction", self.fraction, gt=0.0, le=10.0)
        check_int("parts", self.parts, minimum=1, maximum=len(CORNERS))
        check_int("bar", self.bar, minimum=1)
        check_int("thickness", self.thickness, minimum=1)
        check_real("value", self.value)

    def pixels(self, part: int, height: int, width: int) -> list[tuple[int, int]]:
        """The (row, column) pixels of local pattern ``part`` in a ``height`` x ``width`` image.
        :class:`ConfigError` when the patterns would not fit side by side (they never overlap)."""
        check_int("part", part, minimum=0, maximum=self.parts - 1)
        if 2 * self.bar > width or 2 * self.thickness > height:
            raise ConfigError(f"bar, thickness: four {self.thickness} x {self.bar} corner bars need images "
                              f"of at least {2 * self.thickness} x {2 * self.bar}, got {height} x {width}")
        bottom, right = CORNERS[part]
        rows = range(height - self.thickness, height) if bottom else range(self.thickness)
        cols = range(width - self.bar, width) if right else range(self.bar)
        return [(r, c) for r in rows for c in cols]

    def _stamp(self, x: torch.Tensor, parts: range | list[int]) -> torch.Tensor:
        if x.dim() != 4:
            raise ConfigError(f"dba: expected images (n, c, h, w), got shape {tuple(x.shape)}")
        out = x.clone()
        for part in parts:
            for r, c in self.pixels(part, x.shape[-2], x.shape[-1]):
                out[..., r, c] = self.value
        return out

    def apply_local_trigger(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """``x`` (n, c, h, w) with local pattern ``part`` stamped on (a new tensor)."""
        return self._stamp(x, [part])

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (n, c, h, w) with the global trigger (every local pattern) stamped on (a new tensor)."""
        return self._stamp(x, range(self.parts))

    def poison(self, data: ClientData, num_classes: int, seed: int, *, attacker: int = 0) -> ClientData:
        check_int("attacker", attacker, minimum=0)
        part = attacker % self.parts
        return add_triggered_copies(data, lambda x: self.apply_local_trigger(x, part), self.target,
                                    self.fraction, num_classes, seed)

    def success_rate(self, predict: torch.Tensor, test_y: torch.Tensor) -> float:
        """Among test examples not of class ``target``, the fraction whose version with the global
        trigger is predicted as ``target`` (``predict``: those predictions)."""
        return targeted_success(predict, test_y, self.target)

    def metrics(self, predict: Predict, test_x: torch.Tensor, test_y: torch.Tensor) -> dict[str, float]:
        """``attack_success``: :meth:`success_rate` with the full global trigger."""
        return {"attack_success": self.success_rate(predict(self.apply_trigger(test_x)), test_y)}


@dataclass(frozen=True)
class Neurotoxin(UpdateAttack, kind="neurotoxin"):
    """Neurotoxin (Zhang et al., ICML 2022): the attackers' (backdoored) training confined to the
    coordinates the benign clients change least, so that later benign rounds rarely overwrite them.

    The benign direction is estimated by the previous round's global update (``ctx.global_update``,
    over the parameters: the first ``p = global_update.numel()`` coordinates of a row), as the paper's
    algorithm does (the attacker compares the last two global models it received); the official code
    (``grad_mask_cv`` in jhcknzzm/Federated-Learning-Backdoor) instead accumulates the gradient of the
    attacker's own clean data. The ``ceil(ratio * p)`` parameter coordinates of largest magnitude in
    that estimate (ties to the lower index) are the mask. ``ratio``: the masked fraction, top 1% by
    default (the official CIFAR-10 runs keep 99%, ``--gradmask_ratio 0.99``; its language tasks keep
    95%).

    ``projection``: ``"step"`` (default, the paper's algorithm): the attackers train with projected
    SGD (:class:`~secagg.fedavg.trainer.FrozenSGDTrainer`): every local step's gradient is zeroed on
    the mask and the masked weights stay at the global model's, so the rest of the model adapts to
    carry the backdoor without them. ``"update"``: they train normally and the finished update is
    projected once (the masked coordinates zeroed), which removes part of the backdoor without
    letting the other coordinates compensate. Either way :meth:`craft` zeroes the mask in the update
    sent (a no-op after ``"step"`` training) and keeps the buffers (beyond p). Without a global
    update (round 1, or after a resume) the attackers train normally and each masks the top
    ``ratio`` of its own update's coordinates (all d of them: without a global update the parameter
    count is unknown).

    ``norm_bound``: then scale each update to L2 norm at most that (the paper's PGD projection onto a
    ball around the global model, applied once to the finished update); ``None``: no bound. Not
    omniscient.
    """

    ratio: float = 0.01
    norm_bound: float | None = None
    projection: str = "step"
    omniscient = False

    def __post_init__(self) -> None:
        check_real("ratio", self.ratio, ge=0.0, lt=1.0)
        if self.norm_bound is not None:
            check_real("norm_bound", self.norm_bound, gt=0.0)
        check_choice("projection", self.projection, PROJECTIONS)

    def top(self, global_update: torch.Tensor) -> torch.Tensor:
        """(p,) bool: the ``ceil(ratio * p)`` coordinates of largest magnitude in ``global_update``."""
        p = global_update.numel()
        k = min(p, math.ceil(round(self.ratio * p, 9)))  # rounded: 0.05 * 120 is 6, not 7
        mask = torch.zeros(p, dtype=torch.bool)
        if k > 0:
            mask[torch.sort(global_update.double().abs(), descending=True, stable=True).indices[:k]] = True
        return mask

    def local_trainer(self, trainer: ClientTrainer, global_update: torch.Tensor | None) -> ClientTrainer:
        """Projected SGD off the mask (``projection="step"`` with a global update), else ``trainer``."""
        if self.projection != "step" or global_update is None:
            return trainer
        mask = self.top(global_update.reshape(-1))
        return FrozenSGDTrainer(mask) if bool(mask.any()) else trainer

    def masked(self, ctx: AttackContext) -> torch.Tensor:
        """(f, d) bool: the coordinates each attacker zeroes (``True``)."""
        f, d = ctx.num_attackers, ctx.dim
        g = ctx.global_update
        mask = torch.zeros(f, d, dtype=torch.bool)
        if g is not None:
            mask[:, :g.numel()] = self.top(g.reshape(-1))
            return mask
        k = min(d, math.ceil(round(self.ratio * d, 9)))
        if k == 0:
            return mask
        top = torch.sort(ctx.own.double().abs(), dim=1, descending=True, stable=True).indices[:, :k]
        return mask.scatter_(1, top, True)

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        out = ctx.own.masked_fill(self.masked(ctx), 0.0)
        if self.norm_bound is not None:
            norms = torch.linalg.vector_norm(out.double(), dim=1, keepdim=True)
            out = out * torch.clamp(self.norm_bound / norms.clamp_min(1e-300), max=1.0).to(out.dtype)
        return out
