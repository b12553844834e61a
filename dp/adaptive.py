"""DP-FedAvg with adaptive clipping to a quantile (Andrew, Thakkar, McMahan, Ramaswamy, NeurIPS 2021).

The clip norm C lives in the aggregator state (float64) and tracks the ``target_quantile`` (gamma)
of the clients' update norms. Each round, with m = ``expected_clients``:

* client i sends its update clipped to C and its *centred* clip bit ``b_i - 1/2`` in {-1/2, +1/2}
  (``b_i = 1 if ||delta_i|| <= C else 0``), the bit as ONE EXTRA COORDINATE of the same vector, so
  it goes through the inner sum (with a ``SecureSum`` inner the server never sees a single bit);
* the server adds N(0, (z_delta C)^2) to the update sum and N(0, sigma_b^2) to the centred bit sum,
  releases ``(sum + noise) / m`` as the update and ``b = (sum_i (b_i - 1/2) + noise) / m + 1/2`` as
  the noisy unclipped fraction (the reference ``QuantileEstimatorQuery`` of TensorFlow Privacy does
  the same: centre, sum, noise, divide by the expected count, add 1/2 back);
* geometric update ``C <- C exp(-eta (b - gamma))``: more than gamma of the clients unclipped
  (b > gamma) means C is above the quantile, so C decreases.

Privacy. Adding or removing one client moves the update sum by at most C (L2) and the centred bit
sum by at most 1/2: centring is what makes the bit query's sensitivity 1/2 rather than 1. The two
Gaussian queries together are one Gaussian mechanism on the vector (sum, bit sum) whose noise, scaled
by the sensitivities, has multiplier z with ``z^-2 = z_delta^-2 + (2 sigma_b)^-2``, i.e.
``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` (Andrew et al., Section 3), which needs z < 2 sigma_b.
Accounting is therefore :class:`dp.accounting.GaussianAccountant` with ``noise_multiplier`` z, as for
:class:`dp.central.DPFedAvg`. Defaults gamma = 0.5, eta = 0.2, and sigma_b = max(m / 20, z): m / 20
is the paper's choice for large rounds; the floor at z keeps the default valid for small rounds and
costs the update noise at most a factor (1 - 1/4)^(-1/2) = 1.155.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dp.central import GaussianAccounted, check_sum_inner, clip_rows, inner_sum, rounding_slack, secure_clip
from dp.gaussian import gaussian
from dp.noise import SecureRandom
from secagg.aggregation import Aggregate, Aggregator, AggState, Mean, SecureSum, UpdateBatch, Wrapper
from secagg.aggregation.base import nest_state
from secagg.errors import ConfigError
from secagg.validation import check_real

__all__ = ["BIT_RANGE", "AdaptiveClipDP"]

#: What each client's clip bit is centred by, and so the bit sum's L2 sensitivity (add/remove one).
BIT_RANGE = 0.5


@dataclass(frozen=True)
class AdaptiveClipDP(GaussianAccounted, Wrapper, kind="dp-fedavg-adaptive"):
    """DP-FedAvg whose clip norm follows the ``target_quantile`` of the update norms.

    ``initial_clip``: C_0 > 0. ``noise_multiplier``: z > 0, the *overall* multiplier the accountant
    uses. ``expected_clients``: m = q N > 0. ``target_quantile``: gamma in (0, 1).
    ``learning_rate``: eta > 0. ``count_stddev``: sigma_b > 0 (``None``: max(m / 20, z));
    z < 2 sigma_b. ``sample_rate``, ``delta``, ``accountant``, ``sampling``, ``target_epsilon``,
    ``inner``: as in :class:`dp.central.DPFedAvg` (a ``SecureSum`` inner needs ``clip >= 1/2`` to carry
    the centred bits).
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
        if isinstance(self.inner, SecureSum) and self.inner.clip < BIT_RANGE:
            raise ConfigError(f"inner.clip: must be >= {BIT_RANGE} to carry the centred clip bits through "
                              f"the secure sum, got {self.inner.clip}")
        if self.noise_multiplier >= 2.0 * self.sigma_b:
            raise ConfigError(f"noise_multiplier: must be < 2 sigma_b = {2.0 * self.sigma_b:g} (sigma_b = "
                              f"count_stddev), got {self.noise_multiplier}; raise count_stddev or leave "
                              f"it unset (max(expected_clients / 20, noise_multiplier))")

    @property
    def sigma_b(self) -> float:
        """Noise std on the centred clip-bit sum: ``count_stddev``, or max(m / 20, z) when unset."""
        if self.count_stddev is not None:
            return self.count_stddev
        return max(self.expected_clients / 20.0, self.noise_multiplier)

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
        d, m, n = batch.dim, self.expected_clients, batch.num_clients
        # a secure sum rounds each coordinate: clip the update and shrink the bit by the rounding slack
        # so that what enters the sum still moves it by at most c and 1/2 (the sensitivities)
        clipped, norms = clip_rows(batch.updates, secure_clip(self.inner, c, n, d))
        bits = (norms <= c).to(torch.float64)
        shrink = 1.0 - rounding_slack(self.inner, n, 1) / BIT_RANGE
        # centred on the client: one client moves the bit sum by 1/2, the sensitivity sigma_b is set for
        rows = torch.cat([clipped, (shrink * (bits - BIT_RANGE))[:, None]], dim=1)
        total, out = inner_sum(self, batch.replace(updates=rows, layout=None), state,
                               clip=c, clipped_fraction=float(1.0 - bits.mean()))
        noise = torch.from_numpy(gaussian(self.update_noise_multiplier * c, d, rng))
        update = (total[:d] + noise) / m
        # not divided by shrink: that would scale the released count's sensitivity up with its noise; the
        # estimate is pulled towards 1/2 by the factor shrink instead (1 - 4e-9 with 32-bit words)
        b = (float(total[d]) + float(gaussian(self.sigma_b, 1, rng)[0])) / m + BIT_RANGE
        new_clip = c * math.exp(-self.learning_rate * (b - self.target_quantile))
        metrics = {**out.metrics, "noisy_unclipped_fraction": b, "next_clip": new_clip}
        return Aggregate(update.to(batch.updates.dtype),
                         {**out.state, "clip": torch.tensor([new_clip], dtype=torch.float64)}, metrics)
