"""Distributed differential privacy inside secure aggregation: DDG and Skellam.

Every client adds a small amount of *integer* noise to its own quantized update before the secure
sum; the server only ever sees the sum, whose noise is the sum of the survivors' noises: enough for
central DP even though no party adds it all (Kairouz, Liu, Steinke, ICML 2021, "The Distributed
Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation", DDG; Agarwal, Kairouz,
Liu, NeurIPS 2021, "The Skellam Mechanism for Differentially Private Federated Learning").

Client (:meth:`DistributedDP.encode_client`), with the CSPRNG of :mod:`dp.noise` for every secret draw:
    flatten; zero-pad to L = next power of 2 and rotate (public signs from the round seed,
    :mod:`secagg.rotation`); clip to L2 norm ``clip`` (c); scale by 1/gamma; round each coordinate to
    floor or ceil at random (unbiased), redrawing the whole rounding until its L2 norm is at most
    Delta_2 (conditional randomized rounding of Kairouz et al.; the bound of their reference code's
    ``rounded_l2_norm_bound``):
    ``Delta_2^2 = min(c^2/gamma^2 + L/4 + sqrt(2 ln(1/beta)) (c/gamma + sqrt(L)/2), (c/gamma + sqrt(L))^2)``;
    each try passes with probability >= 1 - beta. Then add N_Z(0, sigma_l^2) ("ddg") or
    Sk(mu_l, mu_l) with ``mu_l = sigma_l^2 / 2`` ("skellam") per coordinate and reduce mod 2^bits.
Server: secure sum of the survivors (mod 2^bits) -> centred representative in [-2^(bits-1),
    2^(bits-1)) -> times gamma -> unrotate -> first d coordinates -> divided by ``expected_clients``
    (``normalize="expected"``, default: the DP-FedAvg convention; a fixed public denominator, so the
    released mean is the released sum times a constant and dropouts shrink it) or by the number of
    survivors (``"survivors"``: the unbiased mean of the survivors' clipped updates; the count is
    public to the server in SecAgg anyway).
The rule is unweighted: every client's clipped update counts once, whatever its example count (a
weight would scale its sensitivity).

Noise planning. ``sigma_l = z c / (gamma sqrt(min_clients))`` in integer units, so that even when only
``min_clients`` survive the sum carries noise of standard deviation ``z c`` in float units (z =
``noise_multiplier``); fewer survivors abort the round (:class:`~secagg.errors.AbortError`) before
anything is decoded. The privacy of the sum is that of the integer mechanism with L2 sensitivity
Delta_2 (and, for Skellam, L1 sensitivity ``min(Delta_2^2, sqrt(L) Delta_2)``): see
:meth:`DistributedDP.privacy_parameters`, which ``dp.accounting`` consumes. ``noise_multiplier=0.0``
means "no DP": rounding and secure sum only.

Choosing gamma from ``bits``. The sum of the rotated, scaled vectors is the rotation of a vector of
norm at most ``n c / gamma`` (n = ``expected_clients``), so each coordinate is sub-Gaussian with
variance proxy ``n^2 c^2 / (L gamma^2)`` (random signs, Hoeffding), whatever the clients' updates.
The rounding errors add ``n / 4`` (bounded, mean zero) and the noise ``n sigma_l^2``. With
``M = 2^(bits-1) / k`` (k = ``k_stddevs``) gamma is the smallest value with
``n^2 c^2 / (L gamma^2) + n / 4 + n sigma_l^2 <= M^2``, i.e.
``gamma = c sqrt(n^2 / L + n z^2 / min_clients) / sqrt(M^2 - n / 4)``: k standard deviations of the
sum fit in half the ring. For "ddg" gamma is raised, if needed, so that ``sigma_l <= SIGMA_MAX``
(the exact sampler's range; rounding variance 1/4 is then below 2e-8 of the noise variance).
:meth:`DistributedDP.wrap_probability_bound` is the Chernoff + union bound on any coordinate of the
sum leaving the ring. ``bits`` is too small (ConfigError) when ``M^2 <= n / 4`` or when the
rounding inflates the sensitivity by more than ``MAX_INFLATION``: ``Delta_2 gamma / c > 1.5`` (the
effective noise multiplier would fall below 2/3 of z).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from dp.noise import SecureRandom, discrete_gaussian, rational_variance, skellam
from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.aggregation.secure import GRAPHS, SecureSum, session_traffic, simulated_dropouts
from secagg.errors import AbortError, ConfigError, RemoteProtocolError, UpdateError
from secagg.protocol.messages import SessionParams
from secagg.protocol.runner import run_session
from secagg.rotation import pad_length, rotate, unrotate
from secagg.seeding import derive_seed, numpy_rng
from secagg.validation import check_choice, check_int, check_real

MECHANISMS = ("ddg", "skellam")
NORMALIZE = ("expected", "survivors")
SIGMA_MAX = 4096.0  # largest sigma_l (integer units) the exact discrete Gaussian sampler is given
MAX_INFLATION = 1.5  # largest allowed Delta_2 * gamma / c
MAX_ROUNDING_TRIES = 10_000


@dataclass(frozen=True)
class Plan:
    """The public parameters of a round for updates of ``dim`` coordinates (integer units).

    ``length``: padded length L; ``gamma``: float value of one integer unit; ``sigma_l``: per-client
    noise standard deviation (0 without DP); ``mu_l``: Skellam parameter ``sigma_l^2 / 2``;
    ``l2_sensitivity``: Delta_2; ``l1_sensitivity``: ``min(Delta_2^2, sqrt(L) Delta_2)``.
    """

    dim: int
    length: int
    gamma: float
    sigma_l: float
    mu_l: float
    l2_sensitivity: float
    l1_sensitivity: float
    bits: int


@dataclass(frozen=True)
class DistributedDP(Aggregator, kind="distributed-dp"):
    """The noisy mean of the clipped updates via secure aggregation with distributed DP noise.

    ``mechanism``: "ddg" (distributed discrete Gaussian) or "skellam". ``clip``: L2 norm c.
    ``noise_multiplier``: z, the noise std on the sum is ``z c`` (0.0: no DP). ``bits``: ring
    Z_(2^bits), 8..32. ``beta``: conditional-rounding parameter. ``k_stddevs``: headroom of the ring in
    standard deviations of the sum. ``expected_clients``: most clients in a round (plans gamma and
    is the default denominator). ``min_clients``: fewest survivors the noise is planned for (0: all
    ``expected_clients``); fewer survivors abort. ``normalize``: "expected" or "survivors".
    ``graph`` ... ``malicious``: the secure-sum settings of :class:`~secagg.aggregation.secure.SecureSum`;
    ``dropout``: simulated dropout fraction after ShareKeys. ``delta``, ``target_epsilon``: the
    accounting's delta and an optional budget (:meth:`epsilon_after` composes the mechanism's RDP over
    rounds, planned for ``min_clients`` survivors, every client in every round: no sampling
    amplification, since the ring is planned for a fixed round size).
    """

    mechanism: str = "ddg"
    clip: float = 1.0
    noise_multiplier: float = 1.0
    bits: int = 20
    beta: float = math.exp(-0.5)
    k_stddevs: float = 4.0
    expected_clients: int = 10
    min_clients: int = 0
    normalize: str = "expected"
    graph: str = "full"
    threshold_fraction: float = 0.5
    corrupt_fraction: float = 0.05
    dropout_fraction: float = 0.1
    dropout: float = 0.0
    malicious: bool = False
    delta: float = 1e-5
    target_epsilon: float | None = None

    def __post_init__(self) -> None:
        check_choice("mechanism", self.mechanism, MECHANISMS)
        check_real("delta", self.delta, gt=0.0, lt=1.0)
        if self.target_epsilon is not None:
            check_real("target_epsilon", self.target_epsilon, gt=0.0)
        check_real("clip", self.clip, gt=0.0)
        check_real("noise_multiplier", self.noise_multiplier, ge=0.0)
        check_int("bits", self.bits, minimum=8, maximum=32)
        check_real("beta", self.beta, gt=0.0, lt=1.0)
        check_real("k_stddevs", self.k_stddevs, gt=0.0)
        check_int("expected_clients", self.expected_clients, minimum=2)
        check_int("min_clients", self.min_clients, minimum=0, maximum=self.expected_clients)
        if self.min_clients == 1:
            raise ConfigError("min_clients: must be 0 (= expected_clients) or >= 2, got 1")
        check_choice("normalize", self.normalize, NORMALIZE)
        self.secure_sum()  # validates the passthrough settings
        n = self.expected_clients
        if (2.0 ** (self.bits - 1) / self.k_stddevs) ** 2 <= n / 4.0:
            raise ConfigError(f"bits: 2^(bits-1) / k_stddevs must exceed sqrt(n/4) = {math.sqrt(n / 4):g} "
                              f"(the rounding noise of {n} clients alone), got bits={self.bits}")

    # ----------------------------------------------------------------------------------- planning

    @property
    def planned_min(self) -> int:
        """The survivor count the noise is planned for: ``min_clients`` or ``expected_clients``."""
        return self.min_clients or self.expected_clients

    def secure_sum(self) -> SecureSum:
        """The :class:`SecureSum` whose protocol settings this rule runs (its value_range is unused)."""
        return SecureSum(bits=self.bits, graph=self.graph, threshold_fraction=self.threshold_fraction,
                         corrupt_fraction=self.corrupt_fraction, dropout_fraction=self.dropout_fraction,
                         weighted=False, dropout=self.dropout, malicious=self.malicious)

    def plan(self, dim: int) -> Plan:
        """gamma, noise and sensitivities for ``dim`` coordinates; ConfigError naming ``bits`` when the
        ring is too small (see the module docstring for the criterion)."""
        check_int("dim", dim, minimum=1)
        length = pad_length(dim)
        c, z, n, n_min = self.clip, self.noise_multiplier, self.expected_clients, self.planned_min
        m2 = (2.0 ** (self.bits - 1) / self.k_stddevs) ** 2
        gamma = c * math.sqrt(n * n / length + n * z * z / n_min) / math.sqrt(m2 - n / 4.0)
        if self.mechanism == "ddg" and z > 0:
            gamma = max(gamma, z * c / (math.sqrt(n_min) * SIGMA_MAX))
        sigma_l = z * c / (gamma * math.sqrt(n_min))
        scaled = c / gamma
        slack = math.sqrt(2.0 * math.log(1.0 / self.beta))
        delta2 = math.sqrt(min(scaled**2 + length / 4.0 + slack * (scaled + math.sqrt(length) / 2.0),
                               (scaled + math.sqrt(length)) ** 2))
        inflation = delta2 * gamma / c
        if inflation > MAX_INFLATION:
            raise ConfigError(
                f"bits: with bits={self.bits} ({length} coordinates, {n} clients) rounding inflates the L2 "
                f"sensitivity {inflation:.3g}x, above {MAX_INFLATION}: raise bits or lower k_stddevs")
        delta1 = min(delta2**2, math.sqrt(length) * delta2)
        return Plan(dim=dim, length=length, gamma=gamma, sigma_l=sigma_l, mu_l=sigma_l**2 / 2.0,
                    l2_sensitivity=delta2, l1_sensitivity=delta1, bits=self.bits)

    def privacy_parameters(self, dim: int, clients: int | None = None) -> dict[str, Any]:
        """What an accountant needs for one round with ``clients`` survivors (default: the planned
        minimum), in integer units: for "ddg" ``l2_sensitivity``, ``sigma_l`` (``sigma_l_squared``: the
        exact rational variance sampled), ``n``; for "skellam" ``l1_sensitivity``, ``l2_sensitivity``,
        ``mu_l``, ``n``. ``mechanism`` is "none" when ``noise_multiplier == 0``."""
        p = self.plan(dim)
        n = self.planned_min if clients is None else check_int("clients", clients, minimum=1)
        out: dict[str, Any] = {"mechanism": self.mechanism if self.noise_multiplier > 0 else "none",
                               "n": n, "dim": p.length, "gamma": p.gamma,
                               "l2_sensitivity": p.l2_sensitivity, "l1_sensitivity": p.l1_sensitivity,
                               "noise_multiplier": self.noise_multiplier}
        if self.noise_multiplier == 0:
            return out
        if self.mechanism == "ddg":
            var = float(rational_variance(p.sigma_l))
            out.update(sigma_l=p.sigma_l, sigma_l_squared=var,
                       effective_noise_multiplier=math.sqrt(n * var) / p.l2_sensitivity)
        else:
            out.update(mu_l=p.mu_l, sigma_l=p.sigma_l,
                       effective_noise_multiplier=math.sqrt(2 * n * p.mu_l) / p.l2_sensitivity)
        return out

    def accountant_kwargs(self, dim: int, clients: int | None = None) -> dict[str, Any]:
        """:meth:`privacy_parameters` under the field names of ``dp.accounting.DiscreteMechanismAccountant``
        (``DiscreteMechanismAccountant(**kw, sample_rate=q)``): ddg: ``sigma`` (per client,
        ``sqrt(sigma_l_squared)``), ``num_clients``, ``dim`` (padded L), sensitivities; skellam: ``mu``,
        the variance per coordinate of the *aggregate* noise ``2 n mu_l``, and the sensitivities.
        ConfigError when ``noise_multiplier == 0`` (nothing to account)."""
        p = self.privacy_parameters(dim, clients)
        if p["mechanism"] == "none":
            raise ConfigError("noise_multiplier: 0 means no DP; there is no privacy loss to account")
        kw = {"mechanism": p["mechanism"], "l2_sensitivity": p["l2_sensitivity"],
              "l1_sensitivity": p["l1_sensitivity"]}
        if p["mechanism"] == "ddg":
            kw.update(sigma=math.sqrt(p["sigma_l_squared"]), num_clients=p["n"], dim=p["dim"])
        else:
            kw.update(mu=2.0 * p["n"] * p["mu_l"])
        return kw

    def epsilon_after(self, rounds: int, dim: int | None = None) -> float | None:
        """Epsilon at ``delta`` after ``rounds`` rounds on ``dim``-coordinate updates (required); ``None``
        with ``noise_multiplier == 0`` (no DP)."""
        from dp.accounting import DiscreteMechanismAccountant

        if self.noise_multiplier == 0.0:
            return None
        if dim is None:
            raise ConfigError("dim: distributed DP's sensitivity depends on the update length; pass dim")
        accountant = DiscreteMechanismAccountant(**self.accountant_kwargs(dim), sample_rate=1.0,
                                                 sampling="none")
        return accountant.epsilon(rounds, self.delta)

    def claims_dp(self) -> bool:
        return self.noise_multiplier > 0

    def privacy_budget(self) -> float | None:
        return self.target_epsilon

    def wrap_probability_bound(self, dim: int, clients: int | None = None) -> float:
        """Upper bound on P(any coordinate of the integer sum of ``clients`` (default
        ``expected_clients``) encodings leaves [-2^(bits-1), 2^(bits-1))).

        Chernoff on each coordinate, ``T = signal + rounding + noise``, then a union over the L
        coordinates: log E[e^(tT)] <= t^2 (n^2 c^2 / (L gamma^2) + n / 4) / 2 + noise term, with noise
        term ``t^2 n sigma_l^2 / 2`` (ddg: the discrete Gaussian is sigma-sub-Gaussian, CKS20) or
        ``2 n mu_l (cosh t - 1)`` (Skellam's exact log-MGF). Ignores the small dependence the
        conditional rounding's redraws add.
        """
        p = self.plan(dim)
        n = self.expected_clients if clients is None else check_int("clients", clients, minimum=1)
        a = 2.0 ** (self.bits - 1)
        s2 = n * n * self.clip**2 / (p.length * p.gamma**2) + n / 4.0
        if self.noise_multiplier > 0 and self.mechanism == "ddg":
            s2 += n * float(rational_variance(p.sigma_l))
        if self.noise_multiplier > 0 and self.mechanism == "skellam":
            mu = n * p.mu_l

            def log_tail(t: float) -> float:
                return -t * a + t * t * s2 / 2.0 + 2.0 * mu * (math.cosh(t) - 1.0)

            hi = min(a / s2, math.asinh(a / (2.0 * mu)))
            res = minimize_scalar(log_tail, bounds=(0.0, hi), method="bounded")
            log_p = min(float(res.fun), log_tail(hi))
        else:
            log_p = -a * a / (2.0 * s2)
        return float(min(1.0, 2.0 * p.length * math.exp(log_p)))

    # ----------------------------------------------------------------------------------- client

    def rotation_seed(self, batch: UpdateBatch) -> int:
        """The public rotation seed of a round, from its seed and index."""
        return self.round_rotation(batch.seed, batch.round)

    @staticmethod
    def round_rotation(round_seed: int, round_index: int) -> int:
        """The public rotation seed of round ``round_index`` whose public seed is ``round_seed``."""
        return derive_seed(round_seed, "distributed-dp-rotation", round_index)

    # -- the session interface a deployment drives (secagg.placement / secagg.backend) ----------------

    is_session: ClassVar[bool] = True

    def check_deployable(self) -> None:
        """Deployed, the planned noise rests on the session threshold bounding the survivors, which
        holds on the full graph only: :class:`ConfigError` naming ``graph`` otherwise."""
        if self.graph != "full":
            raise ConfigError(
                f"graph: deployed distributed DP needs graph='full' (got {self.graph!r}): over a sparse "
                f"SecAgg+ graph the threshold counts shares among neighbours and does not bound how few "
                f"clients an unmasked sum covers, so the planned noise is not guaranteed (simulations "
                f"check the survivors after the sum instead)")

    def secure_params(self, client_ids: tuple[int, ...], dim: int, round_index: int) -> SessionParams:
        """The session of a round with these clients: the padded length and, on the full graph, a
        threshold of at least the planned survivors, so that no sum carrying less noise than planned
        can be unmasked (on a sparse graph the simulation checks the survivors after the sum).
        :class:`ConfigError` above ``expected_clients``; :class:`AbortError` below the planned survivors."""
        ids = tuple(client_ids)
        if len(ids) > self.expected_clients:
            raise ConfigError(f"expected_clients: the round has {len(ids)} clients, above "
                              f"expected_clients={self.expected_clients} that gamma was planned for")
        if len(ids) < self.planned_min:
            raise AbortError(f"min_clients: only {len(ids)} clients in the round, below {self.planned_min}")
        params = self.secure_sum().session_params(ids, self.plan(dim).length, round_index)
        if params.degree < len(ids) - 1:  # SecAgg+: t counts shares among neighbours, not survivors
            return params
        return dataclasses.replace(params, threshold=max(params.threshold, self.planned_min))

    def session_input(self, release: np.ndarray, num_examples: float, weight_bound: float,
                      params: SessionParams, round_seed: int) -> np.ndarray:
        """One client's session input: rotate, clip, scale, round and add its noise share, from the OS
        CSPRNG, here on the client (unweighted: ``num_examples`` is unused). :class:`ProtocolError` when
        the session could unmask a sum with less noise than planned (a threshold below the planned
        survivors, or more clients than gamma was planned for): the server's word is not taken."""
        if params.degree < params.num_clients - 1:
            raise RemoteProtocolError(
                "degree: over a sparse (SecAgg+) graph the threshold does not bound how few "
                "clients an unmasked sum covers, so the planned noise is not guaranteed: "
                "deploy distributed DP with graph='full'")
        if params.threshold < self.planned_min:
            raise RemoteProtocolError(
                f"threshold: the session could unmask a sum of {params.threshold} clients, "
                f"below the {self.planned_min} the noise is planned for: not taking part")
        if params.num_clients > self.expected_clients:
            raise RemoteProtocolError(
                f"client_ids: {params.num_clients} clients, above expected_clients="
                f"{self.expected_clients} that gamma was planned for: not taking part")
        need = self.plan(release.size).length
        if params.vector_length != need:
            raise RemoteProtocolError(f"vector_length: the session sums {params.vector_length} words, "
                                      f"{release.size} coordinates need {need}")
        return self.encode_client(release, self.round_rotation(round_seed, params.round))

    def session_result(self, result: np.ndarray, params: SessionParams, survivors: int, dim: int,
                       round_seed: int) -> Aggregate:
        """The server's reading of an unmasked sum: centred, unrotated, over the denominator;
        :class:`AbortError` below the planned survivors (nothing is decoded)."""
        if survivors < self.planned_min:
            raise AbortError(f"min_clients: {survivors} survivors, below {self.planned_min}: "
                             f"the sum would carry less noise than planned")
        p = self.plan(dim)
        total = self.decode_sum(result, dim, self.round_rotation(round_seed, params.round))
        denom = self.expected_clients if self.normalize == "expected" else survivors
        privacy = self.privacy_parameters(dim, survivors)
        n = params.num_clients
        return Aggregate(torch.from_numpy(total / denom), {}, {
            "survivors": float(survivors),
            "dropped": float(n - survivors),
            "gamma": p.gamma,
            "sigma_l": p.sigma_l,
            "mu_l": p.mu_l if self.mechanism == "skellam" else 0.0,
            "l2_sensitivity": p.l2_sensitivity,
            "l1_sensitivity": p.l1_sensitivity,
            "effective_noise_multiplier": float(privacy.get("effective_noise_multiplier", 0.0)),
            "wrap_probability_bound": self.wrap_probability_bound(dim, survivors),
        })

    def encode_clients(self, updates: np.ndarray, rotation_seed: int,
                       rng: SecureRandom | Sequence[SecureRandom] | None = None) -> tuple[np.ndarray, int]:
        """Encode each row of ``updates`` (n, d): uint32 array (n, L) of residues mod 2^bits, and the
        total number of rounding redraws.

        ``rng``: one :class:`SecureRandom` for all rows (vectorized; simulations), one per row (as
        real clients do), or None (a fresh, secretly keyed one per row).
        """
        q, redraws = self.encode_integers(updates, rotation_seed, rng)
        return (q % np.int64(1 << self.bits)).astype(np.uint32), redraws

    def encode_integers(self, updates: np.ndarray, rotation_seed: int,
                        rng: SecureRandom | Sequence[SecureRandom] | None = None) -> tuple[np.ndarray, int]:
        """As :meth:`encode_clients` before the reduction mod 2^bits: int64 (n, L) rounded vectors plus
        noise (for simulations that need the true integer sum), and the number of redraws."""
        x = np.asarray(updates, dtype=np.float64)
        if x.ndim != 2:
            raise UpdateError(f"updates: expected shape (n, d), got {x.shape}")
        if not np.isfinite(x).all():
            raise UpdateError("updates: non-finite values")
        n = x.shape[0]
        if rng is None:
            rng = [SecureRandom() for _ in range(n)]
        if isinstance(rng, SecureRandom):
            return self._encode(x, rotation_seed, rng)
        if len(rng) != n:
            raise ConfigError(f"rng: expected {n} generators, got {len(rng)}")
        rows, tries = [], 0
        for i in range(n):
            q, t = self._encode(x[i:i + 1], rotation_seed, rng[i])
            rows.append(q)
            tries += t
        return np.concatenate(rows), tries

    def encode_client(self, update: np.ndarray, rotation_seed: int, rng: SecureRandom | None = None
                      ) -> np.ndarray:
        """One client's encoding (L,) uint32 mod 2^bits (rotate, clip, scale, round, noise, reduce)."""
        u = np.asarray(update, dtype=np.float64).reshape(1, -1)
        return self.encode_clients(u, rotation_seed, rng if rng is not None else SecureRandom())[0][0]

    def round_scaled(self, v: np.ndarray, rng: SecureRandom) -> tuple[np.ndarray, int]:
        """Conditional randomized rounding of each row of ``v`` (n, L), already scaled to integer units:
        int64 rows with ``|q - v| < 1`` and ``||q||_2 <= Delta_2``; and the number of redraws."""
        delta2 = self.plan(v.shape[1]).l2_sensitivity
        floor = np.floor(v)
        frac = v - floor
        base = floor.astype(np.int64)
        q = np.empty_like(base)
        todo = np.arange(v.shape[0])
        redraws = 0
        for _ in range(MAX_ROUNDING_TRIES):
            up = rng.uniform(todo.size * v.shape[1]).reshape(todo.size, v.shape[1]) < frac[todo]
            cand = base[todo] + up
            ok = np.einsum("ij,ij->i", cand.astype(np.float64), cand.astype(np.float64)) <= delta2**2
            q[todo[ok]] = cand[ok]
            todo = todo[~ok]
            if not todo.size:
                return q, redraws
            redraws += todo.size
        raise UpdateError(f"beta: conditional rounding failed {MAX_ROUNDING_TRIES} times in a row")

    def encode_signal(self, x: np.ndarray, rotation_seed: int, rng: SecureRandom) -> tuple[np.ndarray, int]:
        """The deterministic-norm part of each row's encoding, before any noise: rotate, clip to ``clip``,
        scale by 1/gamma, round conditionally. int64 (n, L) rows of L2 norm <= Delta_2 (and so L1 norm
        <= ``l1_sensitivity``): what one client adds to the integer sum besides its noise share, and
        the sensitivity :meth:`privacy_parameters` reports. Also returns the number of redraws."""
        p = self.plan(x.shape[1])
        y = rotate(x, rotation_seed)
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        y *= np.minimum(1.0, self.clip / np.maximum(norms, 1e-300)) / p.gamma
        return self.round_scaled(y, rng)

    def _encode(self, x: np.ndarray, rotation_seed: int, rng: SecureRandom) -> tuple[np.ndarray, int]:
        p = self.plan(x.shape[1])
        q, redraws = self.encode_signal(x, rotation_seed, rng)
        if self.noise_multiplier > 0:
            size = q.size
            noise = (discrete_gaussian(p.sigma_l, size, rng) if self.mechanism == "ddg"
                     else skellam(p.mu_l, size, rng))
            q += noise.reshape(q.shape)
        return q, redraws

    # ----------------------------------------------------------------------------------- server

    def centered(self, total: np.ndarray) -> np.ndarray:
        """The representative in [-2^(bits-1), 2^(bits-1)) of each residue of ``total`` (int64)."""
        t = np.asarray(total).astype(np.int64) % np.int64(1 << self.bits)
        t[t >= (1 << (self.bits - 1))] -= np.int64(1 << self.bits)
        return t

    def decode_sum(self, total: np.ndarray, dim: int, rotation_seed: int) -> np.ndarray:
        """The float sum (d,) from the modular integer sum (L,): centre, times gamma, unrotate, truncate."""
        p = self.plan(dim)
        return unrotate(self.centered(total).astype(np.float64) * p.gamma, rotation_seed, dim)

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        return self.aggregate_with_noise(batch, state)

    def aggregate_with_noise(self, batch: UpdateBatch, state: AggState,
                             rngs: Mapping[int, SecureRandom] | None = None) -> Aggregate:
        """:meth:`aggregate`, optionally with given client generators (``rngs[client_id]``: TESTS ONLY)."""
        order = sorted(range(batch.num_clients), key=lambda i: batch.client_ids[i])
        ids = tuple(batch.client_ids[i] for i in order)
        if len(set(ids)) != len(ids):
            raise UpdateError("client_ids: duplicate client id in the batch")
        n, d = batch.num_clients, batch.dim
        if n > self.expected_clients:
            raise ConfigError(f"expected_clients: the round has {n} clients, above "
                              f"expected_clients={self.expected_clients} that gamma was planned for")
        if n < self.planned_min:
            raise AbortError(f"min_clients: only {n} clients in the round, below {self.planned_min}")
        seed = self.rotation_seed(batch)
        updates = batch.updates[order].to(torch.float64).numpy()
        gens = [rngs[u] if rngs is not None else SecureRandom() for u in ids]
        encoded, redraws = self.encode_clients(updates, seed, gens)
        inputs = {u: encoded[row] for row, u in enumerate(ids)}
        params = self.secure_params(ids, d, batch.round)
        drop = simulated_dropouts(ids, self.dropout,  # a simulation's public choice
                                  numpy_rng(batch.seed, "distributed-dp-dropout", batch.round))
        if n - len(drop) < self.planned_min:
            raise AbortError(f"min_clients: {n - len(drop)} survivors, below {self.planned_min}: "
                             f"the sum would carry less noise than planned")
        report = run_session(params, inputs, drop_before=drop)
        if report.result is None:
            raise AbortError(f"min_clients: the session ended without a sum (fewer than {self.planned_min})")
        out = self.session_result(report.result, params, len(report.survivors), d, batch.seed)
        return Aggregate(out.update.to(batch.updates.dtype), dict(state),
                         {**out.metrics, "rounding_redraws": float(redraws), **session_traffic(report)})


__all__ = ["GRAPHS", "MAX_INFLATION", "MECHANISMS", "SIGMA_MAX", "DistributedDP", "Plan"]
