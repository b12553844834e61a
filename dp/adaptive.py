"""DP-FedAvg with adaptive clipping to a quantile (Andrew, Thakkar, McMahan, Ramaswamy, NeurIPS 2021).

The clip norm C lives in the aggregator state (float64) and tracks the ``target_quantile`` (gamma)
of the clients' update norms. Each round, with m = ``expected_clients``:

* client i sends its update clipped to C and the bit ``b_i = 1 if ||delta_i|| <= C else 0``, the bit
  as ONE EXTRA COORDINATE of the same vector, so it goes through the inner sum (with a
  ``SecureSum`` inner the server never sees a single bit);
* the server adds N(0, (z_delta C)^2) to the update sum and N(0, sigma_b^2) to the bit sum, releases
  ``(sum + noise) / m`` as the update and ``b = (sum_i b_i + noise) / m`` as the noisy unclipped
  fraction;
* geometric update ``C <- C exp(-eta (b - gamma))``: more than gamma of the clients unclipped
  (b > gamma) means C is above the quantile, so C decreases.

Privacy: the two Gaussian queries (update sum, sensitivity C, and bit sum, sensitivity 1/2 when the
bits are centred at 1/2) compose to one Gaussian mechanism of noise multiplier z when
``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` (Andrew et al., Section 3), which needs z < 2 sigma_b.
Accounting is therefore :class:`dp.accounting.GaussianAccountant` with ``noise_multiplier`` z, as for
:class:`dp.central.DPFedAvg`; defaults gamma = 0.5, eta = 0.2, sigma_b = m / 20.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dp.central import GaussianAccounted, check_sum_inner, clip_rows, inner_sum
from dp.gaussian import gaussian
from dp.noise import SecureRandom
from secagg.aggregation import Aggregate, Aggregator, AggState, Mean, SecureSum, UpdateBatch, Wrapper
from secagg.aggregation.base import nest_state
from secagg.errors import ConfigError
from secagg.validation import check_real

__all__ = ["AdaptiveClipDP"]


@dataclass(frozen=True)
class AdaptiveClipDP(GaussianAccounted, Wrapper, kind="dp-fedavg-adaptive"):
    """DP-FedAvg whose clip norm follows the ``target_quantile`` of the update norms.

    ``initial_clip``: C_0 > 0. ``noise_multiplier``: z > 0, the *overall* multiplier the accountant
    uses. ``expected_clients``: m = q N > 0. ``target_quantile``: gamma in (0, 1).
    ``learning_rate``: eta > 0. ``count_stddev``: sigma_b > 0 (``None``: m / 20); z < 2 sigma_b.
    ``sample_rate``, ``delta``, ``accountant``, ``sampling``, ``target_epsilon``, ``inner``: as in
    :class:`dp.central.DPFedAvg` (a ``SecureSum`` inner needs ``clip >= 1`` to carry the bits).
    """

    initial_clip: float = 1.0
    noise_multiplier: float = 1.0
    expected_clients: float = 10.0
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float | None = None
    sample_rate: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    sampling: str = "poisson"
    target_epsilon: float | None = None
    inner: Aggregator = field(default_factory=lambda: Mean(weighted=False))

    def __post_init__(self) -> None:
        check_real("initial_clip", self.initial_clip, gt=0.0)
        check_real("expected_clients", self.expected_clients, gt=0.0)
        check_real("target_quantile", self.target_quantile, gt=0.0, lt=1.0)
        check_real("learning_rate", self.learning_rate, gt=0.0)
        if self.count_stddev is not None:
            check_real("count_stddev", self.count_stddev, gt=0.0)
        self.check_accounting()
        super().__post_init__()
        check_sum_inner(self.inner)
        if isinstance(self.inner, SecureSum) and self.inner.clip < 1.0:
            raise ConfigError(f"inner.clip: must be >= 1 to carry the clip bits through the secure sum, "
                              f"got {self.inner.clip}")
        if self.noise_multiplier >= 2.0 * self.sigma_b:
            raise ConfigError(f"noise_multiplier: must be < 2 sigma_b = {2.0 * self.sigma_b:g} (sigma_b = "
                              f"count_stddev, default expected_clients / 20), got {self.noise_multiplier}; "
                              f"raise count_stddev or expected_clients")

    @property
    def sigma_b(self) -> float:
        """Noise std on the clip-bit sum: ``count_stddev``, or m / 20 when unset."""
        return self.count_stddev if self.count_stddev is not None else self.expected_clients / 20.0

    @property
    def update_noise_multiplier(self) -> float:
        """z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2): the multiplier on the update sum's noise."""
        return (self.noise_multiplier ** -2 - (2.0 * self.sigma_b) ** -2) ** -0.5

    def init_state(self, dim: int) -> AggState:
        # the inner sees one extra coordinate (the clip bits)
        return {"clip": torch.tensor([float(self.initial_clip)], dtype=torch.float64),
                **nest_state("inner", self.inner.init_state(dim + 1))}

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        return self.run_round(batch, state)

    def run_round(self, batch: UpdateBatch, state: AggState, rng: SecureRandom | None = None) -> Aggregate:
        """:meth:`aggregate`, optionally drawing the noise from ``rng`` (a seeded one: TESTS ONLY)."""
        c = float(state["clip"][0]) if "clip" in state else float(self.initial_clip)
        clipped, norms = clip_rows(batch.updates, c)
        bits = (norms <= c).to(torch.float64)
        d, m = batch.dim, self.expected_clients
        rows = torch.cat([clipped, bits[:, None]], dim=1)
        total, out = inner_sum(self, batch.replace(updates=rows, layout=None), state,
                               clip=c, clipped_fraction=float(1.0 - bits.mean()))
        noise = torch.from_numpy(gaussian(self.update_noise_multiplier * c, d, rng))
        update = (total[:d] + noise) / m
        b = (float(total[d]) + float(gaussian(self.sigma_b, 1, rng)[0])) / m
        new_clip = c * math.exp(-self.learning_rate * (b - self.target_quantile))
        metrics = {**out.metrics, "noisy_unclipped_fraction": b, "next_clip": new_clip}
        return Aggregate(update.to(batch.updates.dtype),
                         {**out.state, "clip": torch.tensor([new_clip], dtype=torch.float64)}, metrics)
