"""Secure aggregation as a FedAvg aggregator: the server only ever sees the sum.

Each client scales its update by ``w_i / W`` (its example count over a public bound ``W``), appends
``w_i / W`` as one more coordinate, quantizes both into Z_(2^bits) and joins a SecAgg/SecAgg+ session
(:mod:`secagg.protocol`). The server unmasks ``sum_i [w_i x_i / W, w_i / W]`` over the surviving
clients and divides: the weighted FedAvg mean, without ever seeing one update or one weight.

The in-process runner plays every client here; a deployment runs the same state machines over a
network transport. ``dropout`` simulates clients vanishing after they shared their keys (the
hardest case: their pairwise masks must be reconstructed), chosen by the round seed.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.errors import ConfigError, UpdateError
from secagg.protocol.finder import secaggplus_parameters
from secagg.protocol.messages import SessionParams, Stage
from secagg.protocol.runner import SessionReport, run_session
from secagg.quantize import Quantizer
from secagg.rotated_quantize import DEFAULT_WRAP_PROBABILITY, RotatedQuantizer
from secagg.rotation import check_transform, rotated_length
from secagg.seeding import derive_seed, numpy_rng
from secagg.validation import check_choice, check_int, check_real

GRAPHS = ("full", "secaggplus")


def simulated_dropouts(ids: tuple[int, ...], fraction: float,
                       rng: np.random.Generator) -> dict[int, Stage]:  # not secret: simulation only
    """The simulation's dropouts of a session of ``ids``: ``round(fraction * n)`` clients chosen by
    ``rng`` (public: a simulation only) leave before MaskedInput; ``{}`` for ``fraction == 0``."""
    if fraction <= 0:
        return {}
    k = round(fraction * len(ids))  # may leave fewer than t: then the round aborts, as it would live
    chosen = rng.choice(len(ids), size=k, replace=False)
    return {ids[i]: Stage.MASKED_INPUT for i in chosen}


def session_traffic(report: SessionReport) -> dict[str, float]:
    """Bytes each client that completed a simulated session moved (sent + received): mean and max
    (dropped clients stop part-way, so they are left out)."""
    sent = [report.bytes_sent[u] + report.bytes_received[u] for u in report.survivors]
    return {"client_bytes_mean": float(np.mean(sent)), "client_bytes_max": float(np.max(sent))}


@dataclass(frozen=True)
class SecureSum(Aggregator, kind="secure-sum"):
    """The (weighted) mean of the updates, computed through secure aggregation.

    ``value_range``: each quantized (weight-scaled) coordinate must lie in
    [-value_range, value_range]; larger values are clamped to it and counted in the
    ``clipped_fraction`` metric (a per-coordinate quantization range, not an L2 clip norm;
    configuration files may still call it ``clip``). ``bits``: ring Z_(2^bits), at most 32.
    ``graph``: ``"full"`` (Bonawitz et al. 2017, threshold ``floor(threshold_fraction * n) + 1``) or
    ``"secaggplus"`` (Bell et al. 2020: degree and threshold from :func:`secaggplus_parameters` for
    ``corrupt_fraction`` and ``dropout_fraction``; falls back to the full graph for small rounds).
    ``weight_bound``: public bound W on a client's example count; 0 uses the round's largest count
    (fine in simulation; a deployment must fix W in advance, since it is public).
    ``dropout``: fraction of the sampled clients to drop after ShareKeys (simulation).
    ``max_clients``: a public bound on the clients in one session that fixes the quantization grid
    (a round with more is refused); 0 plans the grid for each round's own count, so the grid then
    changes with the round size. A DP rule over the sum needs the fixed grid: with it, one client
    joining changes only its own contribution, not every other client's rounding.
    ``rotation``: compress for the ring (:mod:`secagg.rotated_quantize`): each client clips its
    weight-scaled update to L2 norm ``clip_norm``, rotates it with the round's public signs, rounds it
    at random to ``bits`` bits and lets single coordinates wrap, with the quantum chosen from the
    planned client count and the clip so that the sum wraps with probability at most
    ``wrap_probability`` (``value_range`` is then unused). ``transform``: the rotation
    (:data:`secagg.rotation.TRANSFORMS`): ``"hadamard"`` sends ``pad_length(d) + 1`` words of ``bits``
    bits; ``"dct"`` pads nothing and sends ``d + 1``, with a quantum ``sqrt(2)`` coarser (its entries
    spread a vector half as evenly). Both are far finer than the per-coordinate grid at 8-16 bits.
    ``malicious``: the active-security mode (signed keys, ConsistencyCheck round; see
    :mod:`secagg.protocol.client`), tolerating ``floor(corrupt_fraction * n)`` clients colluding with
    the server: full-graph threshold ``floor((n + corrupt) / 2) + 1`` at least, SecAgg+ parameters
    from the finder's semi-malicious column.
    """

    value_range: float = 1.0
    bits: int = 32
    #: old field names still accepted by from_dict (configuration files)
    renamed: ClassVar[dict[str, str]] = {"clip": "value_range"}
    graph: str = "full"
    threshold_fraction: float = 0.5
    corrupt_fraction: float = 0.05
    dropout_fraction: float = 0.1
    weighted: bool = True
    weight_bound: float = 0.0
    dropout: float = 0.0
    malicious: bool = False
    max_clients: int = 0
    rotation: bool = False
    clip_norm: float = 0.0
    wrap_probability: float = DEFAULT_WRAP_PROBABILITY
    transform: str = "hadamard"

    def __post_init__(self) -> None:
        check_real("value_range", self.value_range, gt=0.0)
        check_int("bits", self.bits, minimum=8, maximum=32)
        check_choice("graph", self.graph, GRAPHS)
        check_real("threshold_fraction", self.threshold_fraction, gt=0.0, lt=1.0)
        check_real("corrupt_fraction", self.corrupt_fraction, ge=0.0, lt=1.0)
        check_real("dropout_fraction", self.dropout_fraction, ge=0.0, lt=1.0)
        check_real("weight_bound", self.weight_bound, ge=0.0)
        check_real("dropout", self.dropout, ge=0.0, lt=1.0)
        check_int("max_clients", self.max_clients, minimum=0)
        for name in ("weighted", "malicious", "rotation"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        check_real("clip_norm", self.clip_norm, ge=0.0)
        check_real("wrap_probability", self.wrap_probability, gt=0.0, lt=1.0)
        if self.rotation and not self.clip_norm > 0:
            raise ConfigError("clip_norm: rotation clips each client's update to an L2 norm before it "
                              "rotates it; set clip_norm > 0 (float units)")
        check_transform(self.transform)
        if self.transform != "hadamard" and not self.rotation:
            raise ConfigError(f"transform: {self.transform!r} is the rotation's; set rotation=True (or leave "
                              f"transform at 'hadamard')")
        if self.clip_norm > 0 and not self.rotation:
            raise ConfigError("clip_norm: only rotation uses it (the per-coordinate grid clips to "
                              "value_range); set rotation=True or leave clip_norm at 0")

    def session_params(self, client_ids: tuple[int, ...], vector_length: int, round_index: int = 0
                       ) -> SessionParams:
        """The session parameters this aggregator uses for a round with these clients."""
        n = len(client_ids)
        if n < 2:
            raise ConfigError("secure aggregation needs at least 2 clients per round")
        degree, threshold = n - 1, min(n, math.floor(self.threshold_fraction * n) + 1)
        corrupt = math.floor(self.corrupt_fraction * n + 1e-9) if self.malicious else 0
        if self.malicious:
            threshold = max(threshold, (n + corrupt) // 2 + 1)
            if threshold > n:
                raise ConfigError(f"corrupt_fraction: {corrupt} corrupt of {n} clients leaves no valid "
                                  f"malicious-mode threshold (need t > (n + corrupt) / 2 and t <= n)")
        if self.graph == "secaggplus" and n >= 4:
            # no sparse graph meets the bounds at small sizes: the full graph (already set) does
            with contextlib.suppress(ConfigError):
                k, t = secaggplus_parameters(n, self.corrupt_fraction, self.dropout_fraction,
                                             malicious=self.malicious)
                if not self.malicious or 2 * t > k:
                    degree, threshold = k, t
        return SessionParams(round=round_index, model_version=b"fedavg", client_ids=client_ids,
                             threshold=threshold, degree=degree, vector_length=vector_length,
                             bits=self.bits, malicious=self.malicious, corrupt=corrupt)

    def quantizers(self, num_clients: int) -> tuple[Quantizer, Quantizer]:
        """(value, weight) quantizers of a session with ``num_clients`` clients: both ends use these.

        Planned for ``max_clients`` when it is set (:class:`ConfigError` if ``num_clients`` exceeds it),
        else for ``num_clients``."""
        planned = self.planned_clients(num_clients)
        return (Quantizer.for_sum(self.value_range, planned, self.bits),
                Quantizer.for_sum(1.0, planned, self.bits))

    def planned_clients(self, num_clients: int) -> int:
        """The client count the grid is planned for: ``max_clients`` when set (:class:`ConfigError` if
        ``num_clients`` exceeds it), else ``num_clients``."""
        if self.max_clients and num_clients > self.max_clients:
            raise ConfigError(f"max_clients: the session has {num_clients} clients, above the bound "
                              f"max_clients={self.max_clients} its quantization grid is planned for")
        return self.max_clients or num_clients

    def rotated(self, dim: int, num_clients: int) -> RotatedQuantizer:
        """The rotation-mode quantizer of a session of ``num_clients`` on ``dim``-coordinate updates."""
        return RotatedQuantizer(self.clip_norm, self.bits, dim, self.planned_clients(num_clients),
                                self.wrap_probability, self.transform)

    def check_plan(self, num_clients: int, dim: int) -> None:
        """:class:`ConfigError` when a session planned for ``num_clients`` cannot encode
        ``dim``-coordinate updates (above ``max_clients``, or more clients than the ring holds)."""
        if self.rotation:
            self.rotated(dim, num_clients)
        else:
            self.quantizers(num_clients)

    def words(self, dim: int) -> int:
        """Session words for a ``dim``-coordinate update: the values (``dim``, or the rotated length
        with ``rotation``) and the weight."""
        return (rotated_length(dim, self.transform) if self.rotation else dim) + 1

    @staticmethod
    def rotation_seed(round_seed: int, round_index: int) -> int:
        """The public rotation signs' seed of round ``round_index`` (every client and the server)."""
        return derive_seed(round_seed, "secure-sum-rotation", round_index)

    def client_weight(self, num_examples: float, bound: float) -> float:
        """A client's weight ``w / W`` in [0, 1] (1 when unweighted); :class:`UpdateError` if out of range.

        ``bound``: the public weight bound ``W`` of the round (> 0 when weighted).
        """
        if not self.weighted:
            return 1.0
        if bound <= 0:
            raise UpdateError("weights: every client has 0 examples; a weighted secure sum needs a "
                              "positive total weight (or weighted=False)")
        if num_examples > bound:
            raise UpdateError(f"weights: a client has {num_examples:g} examples, "
                              f"above weight_bound={bound:g}")
        return num_examples / bound

    def encode_client(self, update: np.ndarray, weight: float, num_clients: int,
                      rng: np.random.Generator | None = None,  # not secret: dither only
                      rotation_seed: int = 0) -> tuple[np.ndarray, int]:
        """One client's session input: ``[weight * update, weight]`` quantized (:meth:`words` uint32
        words), and how many coordinates were clipped (with ``rotation``: 1 if the vector was clipped
        to ``clip_norm``). ``rng``: the stochastic-rounding dither (``None``: the OS CSPRNG, as a
        deployed client should use; seeded only for reproducible simulation). ``rotation_seed``: the
        round's public signs (:meth:`rotation_seed`), with ``rotation``.
        """
        value_q, weight_q = self.quantizers(num_clients)
        x = np.asarray(update, dtype=np.float64) * weight
        if self.rotation:
            q, was_clipped = self.rotated(x.size, num_clients).encode(x, rotation_seed, rng)
            clipped = int(was_clipped)
        else:
            q, clipped = value_q.encode(x, rng=rng)
        qw, _ = weight_q.encode(np.array([weight]), rng=rng)
        return np.concatenate([q, qw]), clipped

    def decode_sum(self, result: np.ndarray, num_clients: int, survivors: int, dim: int | None = None,
                   rotation_seed: int = 0) -> tuple[np.ndarray, float]:
        """``(weighted mean, total weight)`` from the unmasked ``result`` of a session that invited
        ``num_clients`` and summed ``survivors`` (with ``rotation``: of ``dim``-coordinate updates,
        rotated with ``rotation_seed``); :class:`UpdateError` if the total weight is not positive.
        """
        value_q, weight_q = self.quantizers(num_clients)
        d = len(result) - 1
        if self.rotation:
            if dim is None:
                raise ConfigError("dim: decoding a rotated sum needs the update's dimension")
            total = self.rotated(dim, num_clients).decode_sum(result[:d], rotation_seed)
        else:
            total = value_q.decode_sum(result[:d], survivors)
        total_w = float(weight_q.decode_sum(result[d:], survivors)[0])
        if total_w <= 0:
            raise UpdateError("weights: the secure sum of the surviving clients' weights is not positive")
        return total / total_w, total_w

    # -- the session interface a deployment drives (secagg.placement / secagg.backend) ----------------

    is_session: ClassVar[bool] = True

    def secure_params(self, client_ids: tuple[int, ...], dim: int, round_index: int) -> SessionParams:
        """The session of a round with these clients on ``dim``-coordinate updates (:meth:`words`)."""
        return self.session_params(client_ids, self.words(dim), round_index)

    def session_input(self, release: np.ndarray, num_examples: float, weight_bound: float,
                      params: SessionParams, round_seed: int, planned: int = 0) -> np.ndarray:
        """One client's session input for its released update (float, d): ``[w x, w]`` quantized, the
        dither from the OS CSPRNG (``round_seed`` is unused here). ``planned``: the client count the
        round's grid is planned for when the session is one of several whose sums are added (a
        combiner's, :mod:`secagg.two_level`); 0: the session's own."""
        weight = self.client_weight(float(num_examples), weight_bound)
        value, _ = self.encode_client(release, weight, planned or params.num_clients,
                                      rotation_seed=self.rotation_seed(round_seed, params.round))
        return value

    def session_result(self, result: np.ndarray, params: SessionParams, survivors: int, dim: int,
                       round_seed: int) -> Aggregate:
        """The server's reading of an unmasked session sum: the weighted mean of the survivors."""
        n = params.num_clients
        mean, total_weight = self.decode_sum(result, n, survivors, dim,
                                             self.rotation_seed(round_seed, params.round))
        return Aggregate(torch.from_numpy(mean), {}, {
            "survivors": float(survivors), "dropped": float(n - survivors),
            "total_weight": float(total_weight),  # in units of the weight bound W
            **self.error_metrics(dim, n, survivors)})

    def error_metrics(self, dim: int, num_clients: int, survivors: int) -> dict[str, float]:
        """What the quantization may cost, in float units of the sum: the per-coordinate worst case
        (``quantization_error_bound``), or with ``rotation`` the worst-case L2 norm of the error
        (``quantization_error_norm_bound``) and the bound on the sum wrapping (``wrap_probability``)."""
        if not self.rotation:
            return {"quantization_error_bound": self.quantizers(num_clients)[0].error_bound(survivors)}
        rq = self.rotated(dim, num_clients)
        return {"quantization_error_norm_bound": rq.error_norm_bound(survivors),
                "wrap_probability": rq.wrap_probability_bound(survivors)}

    def encode_batch(self, batch: UpdateBatch) -> tuple[dict[int, np.ndarray], float]:
        """Every client's session input for a simulated round (client id -> words, on the grid planned
        for the whole batch, the dither seeded by the round: reproducible, simulation only), and the
        ``clipped_fraction`` metric (coordinates clipped, or with ``rotation`` clients clipped)."""
        order = sorted(range(batch.num_clients), key=lambda i: batch.client_ids[i])
        ids = tuple(batch.client_ids[i] for i in order)
        if len(set(ids)) != len(ids):
            raise UpdateError("client_ids: duplicate client id in the batch")
        updates = batch.updates[order].to(torch.float64).numpy()
        counts = batch.weights[order].numpy()
        bound = self.weight_bound or float(counts.max())
        n, d = updates.shape
        rng = numpy_rng(batch.seed, "secure-sum-dither")  # not secret: reproducible simulation
        seed = self.rotation_seed(batch.seed, batch.round)
        inputs, clipped = {}, 0
        for row, u in enumerate(ids):
            inputs[u], c = self.encode_client(updates[row], self.client_weight(float(counts[row]), bound),
                                              n, rng, seed)
            clipped += c
        return inputs, clipped / (n if self.rotation else n * d)

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        inputs, clipped_fraction = self.encode_batch(batch)
        ids, (n, d) = tuple(sorted(inputs)), batch.updates.shape
        seed = self.rotation_seed(batch.seed, batch.round)
        params = self.session_params(ids, self.words(d), batch.round)
        drop = simulated_dropouts(ids, self.dropout, numpy_rng(batch.seed, "secure-sum-dropout"))
        report = run_session(params, inputs, drop_before=drop)
        assert report.result is not None
        survivors = len(report.survivors)
        mean, _ = self.decode_sum(report.result, n, survivors, d, seed)
        traffic = session_traffic(report)
        metrics = {
            "survivors": float(survivors),
            "dropped": float(len(report.dropped)),
            "threshold": float(params.threshold),
            "degree": float(params.degree),
            "clipped_fraction": clipped_fraction,
            **traffic,
            "server_bytes": float(report.server_bytes_sent + report.server_bytes_received),
            "expansion": traffic["client_bytes_mean"] / (4.0 * d),
            **self.error_metrics(d, n, survivors),
        }
        update = torch.from_numpy(mean).to(batch.updates.dtype)
        return Aggregate(update, dict(state), metrics)


def secure_encoding(aggregator: Aggregator) -> SecureSum | None:
    """The :class:`SecureSum` whose grid encodes each client's row when ``aggregator`` is a secure sum:
    itself, or the one both levels of a two-level sum use (its mean is that SecureSum's of the same
    clients); ``None`` for any other rule. What a DP wrapper's sensitivity must account for."""
    if isinstance(aggregator, SecureSum):
        return aggregator
    if getattr(aggregator, "combines_sessions", False):
        secure = getattr(aggregator, "secure", None)
        return secure if isinstance(secure, SecureSum) else None
    return None
