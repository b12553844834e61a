"""Local differential privacy: every client clips and noises its own update before sending it.

Each client clips its update to L2 norm ``clip`` (C) and adds N(0, (z C)^2) per coordinate from the
CSPRNG on its own device (simulated here row by row, before the inner aggregator sees the batch);
the server, or anyone who sees the updates, then only ever handles noisy rows. Trust model: nobody is
trusted; the price is noise that does not shrink with the number of clients (the mean's noise std
is z C / sqrt(n), not z C / n as with central DP).

Accounting (:func:`dp.accounting.local_gaussian_epsilon`): each release has L2 sensitivity 2C
(replace-one, local DP). ``epsilon_after(rounds)`` is the epsilon of the worst-case client, one that
took part in *every* round (participations = rounds): with client sampling most clients are better
off, but the server sees who took part, so there is no amplification by subsampling to claim.

Placement: ``placement = "client"``. :meth:`LocalDP.client_step` (clip, then noise from the OS CSPRNG)
runs on each client; the server's part, :meth:`LocalDP.aggregate_released`, only hands the noisy rows
to ``inner``. In simulation :meth:`LocalDP.aggregate` runs the two in one process; ``secagg serve``
runs the client step in each ``secagg client`` process, so the server never holds an un-noised update.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from dp.accounting import local_gaussian_epsilon
from dp.central import clip_rows
from dp.gaussian import gaussian
from dp.noise import SecureRandom
from secagg.aggregation import Aggregate, Aggregator, AggState, Mean, UpdateBatch, Wrapper
from secagg.validation import check_real

__all__ = ["LocalDP"]


@dataclass(frozen=True)
class LocalDP(Wrapper, kind="local-dp"):
    """Clip each row to ``clip``, add N(0, (noise_multiplier clip)^2) to it, aggregate with ``inner``.

    ``clip``: C > 0. ``noise_multiplier``: z > 0 (per-client noise std / C). ``delta``: in (0, 1).
    ``target_epsilon``: per-client budget or ``None``. ``inner``: any aggregator of the noisy rows
    (the weighted mean by default; ``SecureSum`` too).
    """

    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    target_epsilon: float | None = None
    inner: Aggregator = field(default_factory=Mean)
    keeps_sensitivity: ClassVar[bool] = True  # noise is added row by row
    placement: ClassVar[str] = "client"  # the noise is local: drawn where the data is

    def claims_dp(self) -> bool:
        return True

    def __post_init__(self) -> None:
        check_real("clip", self.clip, gt=0.0)
        check_real("noise_multiplier", self.noise_multiplier, gt=0.0)
        check_real("delta", self.delta, gt=0.0, lt=1.0)
        if self.target_epsilon is not None:
            check_real("target_epsilon", self.target_epsilon, gt=0.0)
        super().__post_init__()

    def epsilon_after(self, rounds: int, dim: int | None = None) -> float | None:
        """Local epsilon at ``delta`` of a client that took part in all ``rounds`` rounds (worst case)."""
        own = local_gaussian_epsilon(self.noise_multiplier, rounds, self.delta)
        inner = self.inner.epsilon_after(rounds, dim)
        return own if inner is None else max(own, inner)

    def privacy_budget(self) -> float | None:
        return self.target_epsilon

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        return self.aggregate_with_noise(batch, state)

    def client_step(self, update: torch.Tensor, public: tuple[float, ...] = (), *,
                    rng: SecureRandom | None = None) -> torch.Tensor:
        """One client's release: ``update`` (d,) clipped to L2 norm ``clip``, plus N(0, (z clip)^2) per
        coordinate from ``rng`` (default: a freshly keyed CSPRNG; seeded only in tests), in the
        update's dtype."""
        clipped, _ = clip_rows(update.reshape(1, -1), self.clip)
        noise = gaussian(self.noise_multiplier * self.clip, clipped.shape[1],
                         rng if rng is not None else SecureRandom())
        return (clipped[0] + torch.from_numpy(noise)).to(update.dtype)

    def aggregate_released(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        """The server's part: ``inner`` on the clients' noisy rows (the server adds no noise)."""
        return self.run_inner(batch, state, released=True, noise_std=self.noise_multiplier * self.clip)

    def after_sum(self, inner: Aggregate, state: AggState, *, num_clients: int, dtype: torch.dtype
                  ) -> Aggregate:
        """Over a secure sum of the noisy rows the server adds nothing: ``inner``, nested."""
        out = super().after_sum(inner, state, num_clients=num_clients, dtype=dtype)
        std = self.noise_multiplier * self.clip
        return Aggregate(out.update, out.state, {"noise_std": std, **out.metrics})

    def aggregate_with_noise(self, batch: UpdateBatch, state: AggState,
                             rng: SecureRandom | None = None) -> Aggregate:
        """:meth:`aggregate`: :meth:`client_step` on every row, then :meth:`aggregate_released`;
        optionally drawing every client's noise from ``rng`` (seeded: TESTS ONLY); by default each
        client gets its own freshly keyed CSPRNG."""
        norms = torch.linalg.vector_norm(batch.updates.to(torch.float64), dim=1)
        noisy = torch.stack([self.client_step(row, rng=rng) for row in batch.updates])
        out = self.aggregate_released(batch.replace(updates=noisy), state)
        # a simulation knows how many clients clipped; a deployment's server never does
        clipped = float((norms > self.clip).double().mean())
        return dataclasses.replace(out, metrics={"clipped_fraction": clipped, **out.metrics})
