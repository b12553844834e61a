"""DP-FedAvg with central Gaussian noise (McMahan, Ramage, Talwar, Zhang, ICLR 2018).

Each round: clip every client's update to L2 norm ``clip`` (C); take the *unweighted* sum (every
client counts once whatever its example count: a weight would scale its sensitivity), in the clear
(inner ``Mean(weighted=False)``, sum = mean * n) or through secure aggregation (inner
``SecureSum(weighted=False)``, sum = mean * survivors); add N(0, (z C)^2) per coordinate from the
CSPRNG (:func:`dp.gaussian.gaussian`); divide by ``expected_clients`` (q N, a public constant, not the
realized count, which would leak and change the sensitivity). The noise on the released mean has
standard deviation ``z C / (q N)``.

Trust model: the server (or whoever adds the noise) is trusted; the *released* models are
(epsilon, delta) client-level DP. With a SecureSum inner the server sees only the sum of the
clipped updates, but the noise is still added by the server after unmasking: SecAgg hides
individual updates, the DP guarantee covers what is published.

Accounting (:class:`dp.accounting.GaussianAccountant`): ``sampling="poisson"`` claims amplification
by subsampling at rate ``sample_rate``, which holds only if the server samples each client
independently with that probability: ``FedAvgConfig`` refuses any other sampler (through
:meth:`poisson_sample_rate`). ``sampling="none"`` accounts every round as if all clients took part.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from dp.accounting import ACCOUNTANTS, SAMPLING, GaussianAccountant
from dp.gaussian import gaussian
from dp.noise import SecureRandom
from secagg.aggregation import (
    Aggregate,
    Aggregator,
    AggState,
    Mean,
    SecureSum,
    UpdateBatch,
    Wrapper,
    secure_encoding,
)
from secagg.aggregation.base import nest_state, unnest_state
from secagg.errors import AbortError, ConfigError
from secagg.validation import check_choice, check_int, check_real

__all__ = ["DPFedAvg", "check_sum_inner", "clip_rows", "rounding_slack", "secure_clip"]


def clip_rows(updates: torch.Tensor, clip: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clipped, norms)``: each row scaled to L2 norm at most ``clip``, in float64.

    Rows with norm <= ``clip`` are returned unchanged (bit for bit, as float64); longer rows are
    scaled by ``clip / norm``. ``norms`` are the original row norms (float64).
    """
    u = updates.to(torch.float64)
    norms = torch.linalg.vector_norm(u, dim=1)
    c = torch.as_tensor(clip, dtype=torch.float64)
    scale = torch.where(norms > c, c / norms.clamp_min(torch.finfo(torch.float64).tiny), 1.0)
    return torch.where((norms > c)[:, None], u * scale[:, None], u), norms


def check_sum_inner(inner: Aggregator, where: str = "inner") -> None:
    """Refuse an inner aggregator whose output times the client count is not the plain sum, and a
    secure sum whose quantization grid moves with the round size (``max_clients`` unset). A two-level
    secure sum is checked by the SecureSum both its levels encode with (:func:`secure_encoding`)."""
    secure = secure_encoding(inner)
    summed = secure if secure is not None else inner
    if not isinstance(summed, Mean | SecureSum) or summed.weighted:
        raise ConfigError(f"{where}: must be Mean(weighted=False) or SecureSum(weighted=False) (or a "
                          f"two-level sum of one) (the noise is calibrated to the unweighted sum), got "
                          f"{inner!r}")
    if secure is None:
        return
    at = where if secure is inner else f"{where}.secure"
    if secure.rotation:
        raise ConfigError(f"{at}.rotation: the rotated secure sum's modular clipping may wrap (with "
                          f"probability up to its wrap_probability), which this mechanism's accounting does "
                          f"not cover; for rotation with DP use distributed DP (--dp distributed), whose "
                          f"accounting includes its rotation and rounding")
    if secure.max_clients == 0:
        raise ConfigError(f"{at}.max_clients: a DP sum through SecureSum needs a fixed quantization "
                          f"grid (a public bound on the clients per round, e.g. the number of clients); "
                          f"with 0 the grid follows the round size, so one client joining re-rounds "
                          f"every other client's update and the sum moves by more than the clip")


def rounding_slack(inner: Aggregator, num_clients: int, dim: int) -> float:
    """How far (L2, float units) the inner sum's encoding can move one client's ``dim`` coordinates.

    A ``SecureSum`` rounds every coordinate stochastically to its grid (step ``1 / scale`` for a session
    of ``num_clients``), so a row of norm ``r`` enters the sum with norm below ``r + sqrt(dim) / scale``;
    a plain mean adds nothing. Clipping to ``C - slack`` keeps each client's contribution, as summed,
    within the sensitivity ``C`` the noise is calibrated to.
    """
    secure = secure_encoding(inner)
    if secure is None:
        return 0.0
    return math.sqrt(dim) / secure.quantizers(num_clients)[0].scale


def secure_clip(inner: Aggregator, clip: float, num_clients: int, dim: int) -> float:
    """``clip`` minus :func:`rounding_slack`: what to clip rows to so the summed encoding stays within
    ``clip``; :class:`ConfigError` naming ``inner.bits`` when the slack eats the whole clip."""
    slack = rounding_slack(inner, num_clients, dim)
    if slack >= 0.5 * clip:
        raise ConfigError(f"inner.bits: the secure sum's rounding of {num_clients} clients x {dim} "
                          f"coordinates can move an update by {slack:.3g} (L2), more than half the "
                          f"clip {clip:g}: raise the secure sum's bits or lower its clip")
    return clip - slack


class GaussianAccounted:
    """Accounting shared by the client-level Gaussian mechanisms (DP-FedAvg, adaptive clipping).

    Subclasses declare the dataclass fields ``noise_multiplier``, ``sample_rate``, ``delta``,
    ``accountant``, ``sampling`` and ``target_epsilon``, and call :meth:`check_accounting` in
    ``__post_init__``. Listed before ``Wrapper`` in the bases, so these hooks answer for the wrapper
    instead of delegating to the inner aggregator.
    """

    noise_multiplier: float
    sample_rate: float
    delta: float
    accountant: str
    sampling: str
    target_epsilon: float | None

    def check_accounting(self) -> None:
        check_real("noise_multiplier", self.noise_multiplier, gt=0.0)
        check_real("sample_rate", self.sample_rate, gt=0.0, le=1.0)
        check_real("delta", self.delta, gt=0.0, lt=1.0)
        check_choice("accountant", self.accountant, ACCOUNTANTS)
        check_choice("sampling", self.sampling, SAMPLING)
        if self.target_epsilon is not None:
            check_real("target_epsilon", self.target_epsilon, gt=0.0)

    def epsilon_after(self, rounds: int, dim: int | None = None) -> float | None:
        """Client-level epsilon at ``delta`` after ``rounds`` rounds (:class:`GaussianAccountant`)."""
        accountant = GaussianAccountant(self.noise_multiplier, self.sample_rate, self.accountant,
                                        self.sampling)
        return accountant.epsilon(rounds, self.delta)

    def claims_dp(self) -> bool:
        return True

    def privacy_budget(self) -> float | None:
        return self.target_epsilon

    def poisson_sample_rate(self) -> float | None:
        return self.sample_rate if self.sampling == "poisson" else None


@dataclass(frozen=True)
class DPFedAvg(GaussianAccounted, Wrapper, kind="dp-fedavg"):
    """Clip to ``clip``, sum, add N(0, (noise_multiplier clip)^2), divide by ``expected_clients``.

    ``clip``: C > 0 (L2, per client update). ``noise_multiplier``: z > 0 (noise std / C on the sum).
    ``expected_clients``: q N > 0, the public denominator. ``sample_rate``: q in (0, 1] for accounting.
    ``delta``: in (0, 1). ``accountant``: "rdp" or "prv". ``sampling``: "poisson" (amplification;
    the server must Poisson-sample at ``sample_rate``) or "none". ``target_epsilon``: a budget (the run
    stops before exceeding it) or ``None``. ``inner``: ``Mean(weighted=False)`` or
    ``SecureSum(weighted=False)``. ``simulation_seed``: SIMULATION ONLY (benchmark grids): draw the
    noise from a keystream derived from this seed and the round's public seed, so a grid run twice
    (or on Ray) gives the same table. Such noise is predictable to anyone who knows the seeds, so it
    protects nothing: ``secagg serve`` refuses it, and ``None`` (fresh CSPRNG noise) is the default.
    """

    clip: float = 1.0
    noise_multiplier: float = 1.0
    expected_clients: float = 10.0
    sample_rate: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    sampling: str = "poisson"
    target_epsilon: float | None = None
    inner: Aggregator = field(default_factory=lambda: Mean(weighted=False))
    simulation_seed: int | None = None
    #: clipping runs where the updates are in the clear: on the clients over a secure sum (then the
    #: server adds the noise to the sum, :meth:`after_sum`), else on the trusted server
    placement: ClassVar[str] = "update"

    def __post_init__(self) -> None:
        check_real("clip", self.clip, gt=0.0)
        check_real("expected_clients", self.expected_clients, gt=0.0)
        if self.simulation_seed is not None:
            check_int("simulation_seed", self.simulation_seed, minimum=0)
        self.check_accounting()
        super().__post_init__()
        check_sum_inner(self.inner)

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise per coordinate of the released mean: z C / (q N)."""
        return self.noise_multiplier * self.clip / self.expected_clients

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        rng = None
        if self.simulation_seed is not None:  # reproducible simulation noise (see the class docstring)
            key = hashlib.sha256(f"secagg/simulation-noise/{self.simulation_seed}/{batch.seed}".encode())
            rng = SecureRandom(key.digest())
        return self.aggregate_with_noise(batch, state, rng)

    def client_step(self, update: torch.Tensor, public: tuple[float, ...] = ()) -> torch.Tensor:
        """One client's update (d,) clipped to :func:`secure_clip` (float64): what it sends into the
        secure sum when this rule runs over one (the grid is fixed by ``inner.max_clients``)."""
        secure = secure_encoding(self.inner)
        planned = secure.max_clients if secure is not None else 1
        target = secure_clip(self.inner, self.clip, planned, update.numel())
        return clip_rows(update.reshape(1, -1), target)[0][0]

    def after_sum(self, inner: Aggregate, state: AggState, *, num_clients: int, dtype: torch.dtype,
                  rng: SecureRandom | None = None) -> Aggregate:
        """The server's part over the sum of clipped rows: ``inner`` is the inner rule's unweighted mean
        of ``num_clients`` rows (``survivors`` of them through a secure sum); add N(0, (z C)^2) to the
        sum, from ``rng`` (default: the OS CSPRNG), and divide by ``expected_clients``."""
        count = inner.metrics.get("survivors", float(num_clients))
        total = inner.update.to(torch.float64) * count
        noise = torch.from_numpy(gaussian(self.noise_multiplier * self.clip, total.numel(), rng))
        update = (total + noise) / self.expected_clients
        return Aggregate(update.to(dtype), nest_state("inner", inner.state),
                         {"noise_std": self.noise_std, **{f"inner/{k}": v for k, v in inner.metrics.items()}})

    def aggregate_with_noise(self, batch: UpdateBatch, state: AggState,
                             rng: SecureRandom | None = None) -> Aggregate:
        """:meth:`aggregate`, optionally drawing the noise from ``rng`` (a seeded one: TESTS ONLY):
        every row through :meth:`client_step`'s clip, the inner sum, then :meth:`after_sum`."""
        # through a secure sum, rows are clipped a little tighter so that their rounded encoding still
        # moves the sum by at most clip (the sensitivity the noise is calibrated to)
        target = secure_clip(self.inner, self.clip, batch.num_clients, batch.dim)
        clipped, norms = clip_rows(batch.updates, target)
        if secure_encoding(self.inner) is not None and batch.num_clients < 2:
            raise AbortError("secure aggregation needs at least 2 clients; the round is skipped")
        inner = self.inner.aggregate(batch.replace(updates=clipped), unnest_state("inner", state))
        out = self.after_sum(inner, state, num_clients=batch.num_clients, dtype=batch.updates.dtype, rng=rng)
        return Aggregate(out.update, out.state,
                         {"clipped_fraction": float((norms > self.clip).double().mean()), **out.metrics})
