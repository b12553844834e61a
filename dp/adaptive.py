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
from typing import ClassVar

import torch

from dp.central import GaussianAccounted, check_sum_inner, clip_rows, rounding_slack, secure_clip
from dp.gaussian import gaussian
from dp.noise import SecureRandom
from secagg.aggregation import Aggregate, Aggregator, AggState, Mean, UpdateBatch, Wrapper, secure_encoding
from secagg.aggregation.base import nest_state, unnest_state
from secagg.errors import AbortError, ConfigError
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
    ``inner``: as in :class:`dp.central.DPFedAvg` (a ``SecureSum`` inner needs ``value_range >= 1/2`` to carry
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
        secure = secure_encoding(self.inner)
        if secure is not None and secure.value_range < BIT_RANGE:
            raise ConfigError(f"inner.value_range: must be >= {BIT_RANGE} to carry the centred clip bits "
                              f"through the secure sum, got {secure.value_range}")
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

    def current_clip(self, state: AggState) -> float:
        """This round's clip norm C, from ``state`` (``initial_clip`` before the first round)."""
        return float(state["clip"][0]) if "clip" in state else float(self.initial_clip)

    # -- placement: clip and clip bit on the clients over a secure sum, noise and the new clip after it

    #: clipping needs the updates in the clear: on the clients over a secure sum, else on the server
    placement: ClassVar[str] = "update"
    public_size: ClassVar[int] = 1  # the clip norm C of the round, sent to every client

    def round_public(self, state: AggState) -> tuple[float, ...]:
        return (self.current_clip(state),)

    def released_dim(self, dim: int) -> int:
        return dim + 1  # the centred clip bit rides as one extra coordinate

    def _released_rows(self, updates: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows (n, d + 1) float64, clip bits): each row clipped, then its centred clip bit appended.

        Through a secure sum each coordinate is rounded, so the row is clipped to
        :func:`~dp.central.secure_clip` and the bit shrunk by the rounding slack: what enters the sum
        still moves it by at most C and 1/2 (the sensitivities), on the grid ``inner.max_clients`` fixes.
        """
        secure = secure_encoding(self.inner)
        planned = secure.max_clients if secure is not None else 1
        clipped, norms = clip_rows(updates, secure_clip(self.inner, clip, planned, updates.shape[1]))
        bits = (norms <= clip).to(torch.float64)
        shrink = 1.0 - rounding_slack(self.inner, planned, 1) / BIT_RANGE
        # centred on the client: one client moves the bit sum by 1/2, the sensitivity sigma_b is set for
        return torch.cat([clipped, (shrink * (bits - BIT_RANGE))[:, None]], dim=1), bits

    def client_step(self, update: torch.Tensor, public: tuple[float, ...] = ()) -> torch.Tensor:
        """One client's release (d + 1,): its update clipped to this round's C (``public[0]``, sent by
        the server) and its centred clip bit; :class:`ConfigError` for a C that is not finite > 0."""
        if len(public) != 1 or not (math.isfinite(public[0]) and public[0] > 0):
            raise ConfigError(f"public: adaptive clipping needs this round's clip norm, one finite float "
                              f"> 0, got {list(public)[:4]}")
        rows, _ = self._released_rows(update.reshape(1, -1), float(public[0]))
        return rows[0]

    def after_sum(self, inner: Aggregate, state: AggState, *, num_clients: int, dtype: torch.dtype,
                  rng: SecureRandom | None = None) -> Aggregate:
        """The server's part over the sum of released rows: ``inner`` is the inner rule's unweighted
        mean of ``num_clients`` rows of d + 1 (``survivors`` of them through a secure sum); noise on the
        update sum and on the bit sum (from ``rng``, default the OS CSPRNG), then the geometric step."""
        c = self.current_clip(state)
        count = inner.metrics.get("survivors", float(num_clients))
        total = inner.update.to(torch.float64) * count
        d, m = total.numel() - 1, self.expected_clients
        noise = torch.from_numpy(gaussian(self.update_noise_multiplier * c, d, rng))
        update = (total[:d] + noise) / m
        # not divided by shrink: that would scale the released count's sensitivity up with its noise; the
        # estimate is pulled towards 1/2 by the factor shrink instead (1 - 4e-9 with 32-bit words)
        b = (float(total[d]) + float(gaussian(self.sigma_b, 1, rng)[0])) / m + BIT_RANGE
        new_clip = c * math.exp(-self.learning_rate * (b - self.target_quantile))
        metrics = {"clip": c, **{f"inner/{k}": v for k, v in inner.metrics.items()},
                   "noisy_unclipped_fraction": b, "next_clip": new_clip}
        new_state = {**nest_state("inner", inner.state),
                     "clip": torch.tensor([new_clip], dtype=torch.float64)}
        return Aggregate(update.to(dtype), new_state, metrics)

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        return self.aggregate_with_noise(batch, state)

    def aggregate_with_noise(self, batch: UpdateBatch, state: AggState,
                             rng: SecureRandom | None = None) -> Aggregate:
        """:meth:`aggregate`, optionally drawing the noise from ``rng`` (a seeded one: TESTS ONLY): every
        row through the client step, the inner sum, then :meth:`after_sum`."""
        rows, bits = self._released_rows(batch.updates, self.current_clip(state))
        if secure_encoding(self.inner) is not None and batch.num_clients < 2:
            raise AbortError("secure aggregation needs at least 2 clients; the round is skipped")
        inner = self.inner.aggregate(batch.replace(updates=rows, layout=None), unnest_state("inner", state))
        out = self.after_sum(inner, state, num_clients=batch.num_clients, dtype=batch.updates.dtype, rng=rng)
        return Aggregate(out.update, out.state, {"clipped_fraction": float(1.0 - bits.mean()), **out.metrics})
