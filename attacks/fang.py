"""Fang et al.'s full-knowledge local model poisoning attacks (Fang, Cao, Jia and Gong, "Local Model
Poisoning Attacks to Byzantine-Robust Federated Learning", USENIX Security 2020).

The paper crafts local *models* ``w' = w_Re + delta'`` around the global model ``w_Re`` the clients
received; this library's clients send *updates* ``delta = w - w_Re``, so every rule below is stated on
updates. ``s``, the estimated change direction of the global model, is ``sign(mean of the honest
updates)`` per coordinate (the paper's full-knowledge attacker computes it from the before-attack
local models; the honest mean is the estimate Shejwalkar and Houmansadr's reimplementation uses, and
it leaves the attackers' own genuine updates out). Coordinates with ``s_j = 0`` (honest mean exactly
0) get 0. Both attacks are omniscient (they read ``ctx.honest``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attacks.base import AttackContext, UpdateAttack
from secagg.aggregation.distances import pairwise_sq_distances
from secagg.aggregation.krum import krum_scores
from secagg.seeding import torch_generator
from secagg.validation import check_real


def change_direction(ctx: AttackContext) -> torch.Tensor:
    """``s``: the sign of the honest mean update per coordinate (float64, values -1, 0, 1)."""
    return torch.sign(ctx.honest_mean())


@dataclass(frozen=True)
class FangKrum(UpdateAttack, kind="fang-krum"):
    """Fang et al.'s attack on Krum (Section 4.2, full knowledge), on updates.

    Attacker 1 sends ``u'_1 = -lambda * s`` (the paper's ``w'_1 = w_Re - lambda s``); the other c - 1
    send ``u'_1`` (``radius = 0``, the default) or ``u'_1`` moved by ``radius`` in a random direction
    (the paper: close to ``w'_1``; directions are simulation randomness from ``ctx.seed``).
    ``lambda`` starts at the paper's upper bound, with m updates, c attackers, d coordinates and the
    honest updates ``u_i``::

        lambda_max = min_i sum_{l in G_i} ||u_l - u_i|| / ((m - 2c - 1) sqrt(d)) + max_i ||u_i|| / sqrt(d)

    (``G_i``: the m - c - 2 honest updates closest to ``u_i``; ``||u_i||`` is the paper's
    ``D(w_i, w_Re)``; the first term is left out when m - 2c - 1 <= 0 or there are fewer than 3
    honest updates), and is halved until Krum selects a crafted update or it falls below
    ``threshold`` (the paper's 1e-5); then the attackers send the crafted updates of the last
    ``lambda`` tried. Krum "selects a crafted update" when the deployed rule's output
    (``ctx.defence``) is nearer to a crafted row than to every honest row (exactly Krum's choice
    for Krum; for another rule, a crafted row dominating its output); without a known defence, a
    local Krum with the paper's ``m - c - 2`` neighbours and ``f = c`` decides.
    """

    threshold: float = 1e-5
    radius: float = 0.0

    def __post_init__(self) -> None:
        check_real("threshold", self.threshold, gt=0.0)
        check_real("radius", self.radius, ge=0.0)

    def upper_bound(self, ctx: AttackContext) -> float:
        """The paper's ``lambda_max`` for the round (see the class docstring)."""
        honest = ctx.honest.double()
        h, m, c, d = honest.shape[0], ctx.num_clients, ctx.num_attackers, ctx.dim
        root = math.sqrt(d)
        bound = float(torch.linalg.vector_norm(honest, dim=1).max()) / root if h else 0.0
        k = m - c - 2  # the honest neighbours of each honest update in the bound
        if m - 2 * c - 1 > 0 and k >= 1 and h >= k + 1:
            dist = pairwise_sq_distances(honest).clamp_min(0.0).sqrt()
            dist.fill_diagonal_(math.inf)
            nearest = dist.topk(k, dim=1, largest=False).values.sum(dim=1)
            bound += float(nearest.min()) / ((m - 2 * c - 1) * root)
        return bound

    def _rows(self, ctx: AttackContext, lam: float, s: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return (-lam * s).expand(ctx.num_attackers, ctx.dim) + offsets

    def _offsets(self, ctx: AttackContext) -> torch.Tensor:
        offsets = torch.zeros(ctx.num_attackers, ctx.dim, dtype=torch.float64)
        if self.radius > 0 and ctx.num_attackers > 1:
            g = torch_generator(ctx.seed, "fang-krum")
            v = torch.randn(ctx.num_attackers - 1, ctx.dim, generator=g, dtype=torch.float64)
            offsets[1:] = self.radius * v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-300)
        return offsets

    def selected(self, ctx: AttackContext, rows: torch.Tensor) -> bool:
        """Whether the rule (``ctx.defence``, else a local Krum) selects one of the crafted ``rows``."""
        h = ctx.honest.shape[0]
        stack = torch.cat([ctx.honest, rows.to(ctx.honest.dtype)])
        if ctx.defence is None:
            neighbours = max(1, min(ctx.num_clients - ctx.num_attackers - 2, ctx.num_clients - 1))
            scores = krum_scores(stack, neighbours)
            return int(torch.sort(scores, stable=True).indices[0]) >= h
        out = ctx.defence(stack).double()
        dist = torch.linalg.vector_norm(stack.double() - out, dim=1)
        return int(torch.argmin(dist)) >= h  # ties: the first (an honest row): not selected

    def strength(self, ctx: AttackContext) -> float:
        """The ``lambda`` the attackers send this round (the binary search of the class docstring)."""
        s, offsets = change_direction(ctx), self._offsets(ctx)
        lam = self.upper_bound(ctx)
        while not self.selected(ctx, self._rows(ctx, lam, s, offsets)) and lam / 2 >= self.threshold:
            lam /= 2
        return lam

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        s, offsets = change_direction(ctx), self._offsets(ctx)
        return self._rows(ctx, self.strength(ctx), s, offsets).to(ctx.own.dtype)


@dataclass(frozen=True)
class FangTrim(UpdateAttack, kind="fang-trim"):
    """Fang et al.'s attack on the trimmed mean and the median (Section 4.2, full knowledge), on
    updates.

    With ``u_max,j`` and ``u_min,j`` the largest and smallest honest update of coordinate j, each
    attacker sends, independently per coordinate, a value drawn uniformly from (``b = 2`` as in the
    paper)::

        s_j = -1 (coordinate decreases): [u_max,j, b u_max,j] if u_max,j > 0, else [u_max,j, u_max,j / b]
        s_j = +1 (coordinate increases): [u_min,j / b, u_min,j] if u_min,j > 0, else [b u_min,j, u_min,j]

    i.e. beyond the honest range on the side opposite to the change direction, at most b times as far
    from 0 (the paper applies the rule to model parameters ``w``, whose scale is the model's; on
    updates the intervals scale with the updates; the official code applies it to gradients, with
    ``1/U(1, b)`` and ``U(1, b)`` factors instead of uniform draws in the intervals). The draws are
    simulation randomness from ``ctx.seed``; ``s_j = 0`` sends 0.
    """

    b: float = 2.0

    def __post_init__(self) -> None:
        check_real("b", self.b, gt=1.0)

    def intervals(self, ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) per coordinate, (d,) float64 each: where the attackers' values are drawn."""
        honest = ctx.honest.double()
        s = change_direction(ctx)
        top, bottom = honest.max(dim=0).values, honest.min(dim=0).values
        b = self.b
        above_lo, above_hi = top, torch.where(top > 0, b * top, top / b)
        below_lo, below_hi = torch.where(bottom > 0, bottom / b, b * bottom), bottom
        zero = torch.zeros_like(top)
        low = torch.where(s < 0, above_lo, torch.where(s > 0, below_lo, zero))
        high = torch.where(s < 0, above_hi, torch.where(s > 0, below_hi, zero))
        return low, high

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        low, high = self.intervals(ctx)
        g = torch_generator(ctx.seed, "fang-trim")
        draw = torch.rand(ctx.num_attackers, ctx.dim, generator=g, dtype=torch.float64)
        return (low + draw * (high - low)).to(ctx.own.dtype)
