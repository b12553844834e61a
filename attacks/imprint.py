"""Active malicious-server attacks that secure aggregation does not stop: imprint and trap weights.

A server that may choose the model it sends can make the *sum* of the clients' updates leak single
training examples exactly, because the leak happens inside each client's own gradient, before any
aggregation:

* **Imprint module** (Fowl, Geiping, Czaja, Goldblum, Goldstein, ICLR 2022, "Robbing the Fed:
  Directly obtaining private data in federated learning with modified models"). A linear layer of
  ``k`` bins with ReLU is inserted in front of the model: every row is the same direction ``m``
  (scaled by a small gain), bias ``-c_i`` with thresholds ``c_1 < ... < c_k`` at quantiles of the
  public distribution of ``m . x``; a read-out layer with *identical* columns adds the bins back to
  the input, so every active bin gets the same backpropagated signal ``g(x)``. Bin ``i`` fires for
  every example with ``m . x > c_i``, hence ``dW_i - dW_{i+1} = sum g(x) x`` and
  ``db_i - db_{i+1} = sum g(x)`` over the examples between ``c_i`` and ``c_{i+1}``: an example alone
  in its interval is ``(dW_i - dW_{i+1}) / (db_i - db_{i+1})``, *exactly*, from the sum of any number
  of clients' updates (:func:`recover_imprint`). ``imprint_inplace`` folds the same construction into
  the MLP's own first layer (its hidden units are the bins, the next layer gets identical columns):
  no new tensor, same names and shapes.
* **Trap weights** (Boenisch, Dziedzic, Schuster, Shamsabadi, Shumailov, Papernot, EuroS&P 2023,
  "When the Curious Abandon Honesty: Federated Learning Is Not Private"). The architecture is kept;
  each row of the first linear layer gets a random half of its weights negative, and the negative
  half is scaled up so that the unit fires for few examples (here the scale is calibrated per row
  on public data to ``activation_rate``). A unit active for one example of the whole round gives
  ``dW_j / db_j = x`` (:func:`recover_trap`); units active for several give blends.

What this module runs (:func:`run_attack`): ``clients`` clients, each with its own disjoint batch of
``batch_size`` digits (``secagg.data.digits``), take **one full-batch local SGD step** on the
malicious model with the library's client trainer (:func:`secagg.fedavg.client.client_update`:
``epochs=1, batch_size=0``, FedSGD: the update is ``-lr`` times the gradient of the batch's mean
loss); the updates go through the library's aggregator (a real :class:`SecureSum` session:
SecAgg or SecAgg+, honest or malicious-server mode; or DP-FedAvg); the server recovers images from
the aggregate alone. The recovery is a ratio, so it is blind to any factor common to a client's
update (its learning rate, its example weight, DP clipping) or to the whole aggregate (sum vs mean):
**clipping alone does not defend, noise does**. Quantization in the secure sum adds an error of at
most ``E = 1 / scale`` per coordinate of the mean (:meth:`Quantizer.error_bound` over ``n``); a
recovered pixel is then off by at most ``4 E / (|db_i - db_{i+1}| - 2 E)`` (``x`` in [0, 1]), reported
as ``pixel_error_bound`` (the clients' float32 update adds rounding of its own, not in the bound).

What each defence does against it (measured by ``benchmarks/imprint_attack.py``):

* Secure aggregation (SecAgg, SecAgg+; honest or malicious-server mode) **does not stop it**: it
  hides each update inside the sum, but the imprint makes the sum itself hold separated examples.
  Malicious-server mode binds the session to one model version (a deployment's clients check it is
  the hash of the weights they received), which blocks sending *different* models to different
  clients (Pasquini, Francati, Ateniese, CCS 2022); these attacks send the *same* model to everyone.
* Client-level DP (DP-FedAvg: clip each update, Gaussian noise on the sum): the noise is added to
  ``dW`` and ``db`` alike, and one example's share of ``db`` is a tiny part of a clipped update, so
  recovery collapses at noise multipliers well below 1.
* Client-side model check: a deployment's client (``secagg.transport.node.NetworkClient.train``)
  refuses weights whose tensor names, shapes or dtypes differ from its configured model, so the
  *inserted* imprint module is refused. **It does not catch trap weights nor the in-place imprint**
  (same architecture, other values). Under Flower the mod (``secagg.integrations.flower.mod``) takes
  the layout from the server's arrays and compares them to nothing of its own: only the user's
  training function (a strict ``load_state_dict``) refuses an added layer there.
  :func:`state_commitment` / :func:`check_first_round_model` sketch a check of the first round's
  weights against a published commitment of the agreed initial state: it catches both in round 1
  only; from round 2 on the weights are the server's to choose.

What it does not do: multi-step local training (the bins move between steps), batch norm, or
attacks on labels. Simulation randomness (client batches, the direction, trap signs) comes from
:mod:`secagg.seeding`: reproducible, not secret.
"""

from __future__ import annotations

import copy
import hashlib
import math
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attacks.image_metrics import psnr
from secagg.aggregation import Aggregator, Mean, SecureSum, UpdateBatch
from secagg.data.digits import load_digits_split
from secagg.data.federated import ClientData
from secagg.errors import ConfigError, RemoteProtocolError
from secagg.fedavg.client import client_update
from secagg.fedavg.config import ClientConfig
from secagg.layout import ParamLayout
from secagg.models import build_model
from secagg.seeding import derive_seed, numpy_rng, torch_generator
from secagg.validation import check_choice, check_int, check_real

ATTACKS = ("imprint", "imprint_inplace", "trap_weights")
DEFENCES = ("none", "secure_sum", "secaggplus", "secure_sum_malicious", "secaggplus_malicious", "dp_fedavg",
            "distributed_dp")
DP_DEFENCES = ("dp_fedavg", "distributed_dp")
DIRECTIONS = ("random", "brightness")
PRIORS = ("gaussian", "empirical")
#: PSNR (dB) at which an example counts as recovered: RMSE 0.1 on [0, 1] pixels. On digits the
#: uninformed guess (the public mean image, ``baseline_psnr``) scores about 11 dB and a bin's blend of
#: two or more examples about 10-17 dB against its best match (up to ~20 dB when one example dominates
#: the blend), so >= 20 dB is one individual, recognisable digit.
THRESHOLD_DB = 20.0
#: PSNR values are capped here before averaging (an exact float64 recovery has MSE 0 -> inf)
PSNR_CAP_DB = 150.0
#: The imprint rows are ``gain * m`` with ``|m| = 1``: a small gain keeps the weights small next to their
#: update, so the clients' float32 ``new - old`` keeps the update's digits (gain 1: ~60 dB, 1e-2: ~120 dB).
IMPRINT_GAIN = 1e-2
#: Candidates whose denominator is below this fraction of the largest are dropped (float32 rounding of
#: bins no example reached is ~1e-6 of the largest)
REL_TOL = 1e-4
INPUT_SHAPE = (1, 8, 8)
NUM_CLASSES = 10


# ---------------------------------------------------------------------------------------- models


def imprint_direction(kind: str, features: int, seed: int) -> torch.Tensor:
    """The shared direction ``m`` (unit L2 norm, float32, (features,)): ``"random"`` (N(0, I) from the
    seeded simulation generator, normalised) or ``"brightness"`` (the average pixel). Digits' pixels
    are multiples of 1/16, so brightness ties often (two examples in one bin); a random direction
    almost never ties."""
    check_choice("direction", kind, DIRECTIONS)
    features = check_int("features", features, minimum=1)
    check_int("seed", seed, minimum=0)
    if kind == "brightness":
        m = torch.ones(features)
    else:
        m = torch.randn(features, generator=torch_generator(seed, "imprint-direction"))
    return m / m.norm()


def imprint_thresholds(public_x: torch.Tensor, direction: torch.Tensor, bins: int,
                       prior: str = "gaussian") -> torch.Tensor:
    """The ``bins`` increasing thresholds ``c_i`` on ``m . x`` at the quantile levels ``i / (bins + 1)``
    of the public data ``public_x`` (n, ...) projected on ``direction``: of a Gaussian fitted to it
    (``"gaussian"``, the assumption of Fowl et al.) or of the empirical distribution (``"empirical"``).
    Each bin then holds about ``1 / (bins + 1)`` of the examples; those below ``c_1`` are lost."""
    bins = check_int("bins", bins, minimum=2)
    check_choice("prior", prior, PRIORS)
    flat = public_x.reshape(len(public_x), -1).double()
    if flat.shape[0] < 2 or flat.shape[1] != direction.numel():
        raise ConfigError(f"public_x: expected >= 2 examples of {direction.numel()} features, got "
                          f"{tuple(public_x.shape)}")
    proj = flat @ direction.double()
    levels = torch.arange(1, bins + 1, dtype=torch.float64) / (bins + 1)
    if prior == "gaussian":
        dist = statistics.NormalDist(float(proj.mean()), float(proj.std()))
        c = torch.tensor([dist.inv_cdf(float(q)) for q in levels], dtype=torch.float64)
    else:
        c = torch.quantile(proj, levels)
    return c.float()


class ImprintModel(nn.Module):
    """``body(x + readout(relu(imprint(flatten(x)))))``: the imprint module of Fowl et al. in front of
    ``body``. ``imprint``: Linear(features, bins), rows ``gain * direction``, biases
    ``-gain * thresholds``; ``readout``: Linear(bins, features), every entry ``1 / (bins * gain)``, zero
    bias (identical columns: every active bin receives the same gradient; the scale keeps the shift
    added to the input of order ``m . x``). Tensors ``imprint.*``, ``readout.*``, ``body.*``."""

    def __init__(self, body: nn.Module, direction: torch.Tensor, thresholds: torch.Tensor,
                 gain: float = IMPRINT_GAIN) -> None:
        super().__init__()
        gain = check_real("gain", gain, gt=0.0)
        if direction.dim() != 1 or thresholds.dim() != 1 or thresholds.numel() < 2:
            raise ConfigError(f"direction, thresholds: expected 1-D tensors (>= 2 thresholds), got "
                              f"{tuple(direction.shape)} and {tuple(thresholds.shape)}")
        features, bins = direction.numel(), thresholds.numel()
        self.imprint = nn.Linear(features, bins)
        self.readout = nn.Linear(bins, features)
        self.body = body
        with torch.no_grad():
            self.imprint.weight.copy_(gain * direction.float().expand(bins, features))
            self.imprint.bias.copy_(-gain * thresholds.float())
            self.readout.weight.fill_(1.0 / (bins * gain))
            self.readout.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.imprint(x.flatten(1)))
        return self.body(x + self.readout(h).view_as(x))


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def first_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The name and module of ``model``'s first ``nn.Linear`` (in module order); ConfigError if none
    or if it has no bias (both recoveries divide by the bias gradient)."""
    layers = _linears(model)
    if not layers or layers[0][1].bias is None:
        raise ConfigError("model: needs a first nn.Linear layer with a bias")
    return layers[0]


def imprint_inplace(model: nn.Module, direction: torch.Tensor, public_x: torch.Tensor, *,
                    prior: str = "gaussian", gain: float = IMPRINT_GAIN, seed: int = 0) -> nn.Module:
    """A copy of an MLP (Flatten -> Linear -> ReLU -> Linear ...) whose first Linear is an imprint
    layer (its ``out`` units are the bins) and whose second Linear has identical columns (a seeded
    random vector), so that every bin receives the same gradient. Same tensor names, shapes and dtypes
    as ``model``: an architecture check cannot tell. ConfigError if the first two Linears do not
    chain."""
    out = copy.deepcopy(model)
    layers = _linears(out)
    if len(layers) < 2 or layers[0][1].out_features != layers[1][1].in_features:
        raise ConfigError("model: imprint_inplace needs two chained nn.Linear layers (Flatten -> Linear -> "
                          "ReLU -> Linear)")
    first, second = layers[0][1], layers[1][1]
    if first.in_features != direction.numel() or first.bias is None:
        raise ConfigError(f"direction: the first Linear takes {first.in_features} features (with a bias), "
                          f"got a direction of {direction.numel()}")
    bins = first.out_features
    c = imprint_thresholds(public_x, direction, bins, prior)
    column = torch.randn(second.out_features, generator=torch_generator(seed, "imprint-inplace-column"))
    with torch.no_grad():
        first.weight.copy_(gain * direction.float().expand(bins, -1))
        first.bias.copy_(-gain * c)
        # the output is sum(h) * column + bias: scaled so that the logits stay of order one
        second.weight.copy_((column / (bins * gain))[:, None].expand(-1, bins))
    return out


def trap_weights(model: nn.Module, public_x: torch.Tensor, *, activation_rate: float, seed: int = 0
                 ) -> nn.Module:
    """A copy of ``model`` whose first Linear holds trap weights (Boenisch et al.): per row, the
    magnitudes of the honest weights, a random half of them negative (seeded simulation choice), the
    negative half scaled by ``s_j`` chosen so that the unit fires on ``activation_rate`` of the public
    examples ``public_x`` (the (1 - rate) quantile of ``(P_j(x) + b_j) / N_j(x)``, P and N the positive
    and negative halves' sums). Biases and every other tensor are unchanged: same architecture."""
    rate = check_real("activation_rate", activation_rate, gt=0.0, lt=1.0)
    out = copy.deepcopy(model)
    _, layer = first_linear(out)
    flat = public_x.reshape(len(public_x), -1).double()
    if flat.shape[1] != layer.in_features:
        raise ConfigError(f"public_x: the first Linear takes {layer.in_features} features, got "
                          f"{tuple(public_x.shape)}")
    gen = torch_generator(seed, "trap-weights-signs")
    w = layer.weight.detach().double().abs()
    b = layer.bias.detach().double()
    rows = []
    for j in range(w.shape[0]):
        negative = torch.zeros(w.shape[1], dtype=torch.bool)
        negative[torch.randperm(w.shape[1], generator=gen)[: w.shape[1] // 2]] = True
        pos = torch.where(negative, 0.0, w[j])
        neg = torch.where(negative, w[j], 0.0)
        ratio = (flat @ pos + b[j]) / (flat @ neg).clamp_min(1e-12)
        # below 0: fewer than ``rate`` of the public examples fire the unit even without the negative half
        scale = max(float(torch.quantile(ratio, 1.0 - rate)), 0.0)
        rows.append(pos - scale * neg)
    with torch.no_grad():
        layer.weight.copy_(torch.stack(rows).to(layer.weight.dtype))
    return out


# -------------------------------------------------------------------------------------- recovery


@dataclass(frozen=True)
class Recovery:
    """Images recovered from an aggregate. ``images``: (m, c, h, w) projected to [0, 1]; ``raw``: the
    same before projection (float64); ``denominators``: (m,) the bias-gradient (difference) each was
    divided by; ``units``: (m,) the bin or neuron index each came from."""

    images: torch.Tensor
    raw: torch.Tensor
    denominators: torch.Tensor
    units: torch.Tensor


def _check_layer_grads(weight: torch.Tensor, bias: torch.Tensor, input_shape: Sequence[int]) -> int:
    shape = tuple(input_shape)
    features = math.prod(shape)
    if weight.dim() != 2 or bias.dim() != 1 or weight.shape != (bias.numel(), features):
        raise ConfigError(f"weight_update, bias_update: expected ({bias.numel()}, {features}) and "
                          f"({bias.numel()},) for input {shape}, got {tuple(weight.shape)} and "
                          f"{tuple(bias.shape)}")
    return features


def _select(num: torch.Tensor, den: torch.Tensor, input_shape: Sequence[int], min_denominator: float
            ) -> Recovery:
    min_denominator = check_real("min_denominator", min_denominator, ge=0.0)
    floor = max(min_denominator, REL_TOL * float(den.abs().max()) if den.numel() else 0.0)
    keep = den.abs() > floor
    raw = (num[keep] / den[keep, None]).reshape(-1, *input_shape)
    return Recovery(raw.clamp(0.0, 1.0), raw, den[keep], torch.nonzero(keep).flatten())


def recover_imprint(weight_update: torch.Tensor, bias_update: torch.Tensor, input_shape: Sequence[int],
                    *, min_denominator: float = 0.0) -> Recovery:
    """Fowl et al.'s recovery from an imprint layer's aggregated update (bins ordered by increasing
    threshold): ``(dW_i - dW_{i+1}) / (db_i - db_{i+1})`` (``dW_bins = 0``) for every bin whose
    denominator exceeds ``min_denominator`` and ``REL_TOL`` of the largest. Works on gradients, on
    summed or averaged updates alike (any common factor cancels). A bin holding one example gives it
    exactly; two or more give their blend (weighted by each example's gradient signal)."""
    _check_layer_grads(weight_update, bias_update, input_shape)
    w, b = weight_update.double(), bias_update.double()
    dw = w - torch.cat([w[1:], torch.zeros_like(w[:1])])
    db = b - torch.cat([b[1:], torch.zeros_like(b[:1])])
    return _select(dw, db, input_shape, min_denominator)


def recover_trap(weight_update: torch.Tensor, bias_update: torch.Tensor, input_shape: Sequence[int], *,
                 min_denominator: float = 0.0) -> Recovery:
    """Boenisch et al.'s recovery from a first layer's aggregated update: ``dW_j / db_j`` for every unit
    whose bias update exceeds ``min_denominator`` and ``REL_TOL`` of the largest. Exact for a unit that
    exactly one example of the round activated; a blend otherwise (several units may give the same
    example)."""
    _check_layer_grads(weight_update, bias_update, input_shape)
    return _select(weight_update.double(), bias_update.double(), input_shape, min_denominator)


def score(recovered: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per_recovered, per_truth)``: for each recovered image, the PSNR (dB, pixels in [0, 1]) of its
    best-matching true example; for each true example, that of its best-matching recovered image
    (``-inf`` when nothing was recovered)."""
    if truth.dim() != 4 or (recovered.numel() and recovered.shape[1:] != truth.shape[1:]):
        raise ConfigError(f"recovered, truth: expected (m, c, h, w) and (n, c, h, w), got "
                          f"{tuple(recovered.shape)} and {tuple(truth.shape)}")
    if len(recovered) == 0:
        return torch.zeros(0, dtype=torch.float64), torch.full((len(truth),), -math.inf, dtype=torch.float64)
    m, n = len(recovered), len(truth)
    table = psnr(recovered.repeat_interleave(n, 0).double(), truth.repeat(m, 1, 1, 1).double()).reshape(m, n)
    return table.max(1).values, table.max(0).values


# ------------------------------------------------------------------------- commitment (round 1)


def state_commitment(state: Mapping[str, torch.Tensor]) -> bytes:
    """SHA-256 over the state dict's entries in name order (name, dtype, shape, raw bytes): the
    commitment a federation can publish for its agreed initial weights (e.g. derived from a public
    seed) before training starts."""
    h = hashlib.sha256(b"secagg/initial-state/v1")
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        header = f"{name}|{t.dtype}|{tuple(t.shape)}".encode()
        h.update(len(header).to_bytes(4, "big") + header)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


def check_first_round_model(state: Mapping[str, torch.Tensor], commitment: bytes) -> None:
    """A client's check of the round-1 global model: :class:`RemoteProtocolError` unless ``state``
    hashes to the published ``commitment`` (:func:`state_commitment`). Catches trap weights and
    imprint layers *in round 1 only*: later rounds' weights depend on the aggregates, which clients
    cannot check without more machinery (e.g. the server publishing each round's aggregate and
    clients replaying the server step), so a patient server plants its trap in round 2."""
    if not isinstance(commitment, bytes) or len(commitment) != 32:
        raise ConfigError("commitment: expected the 32-byte SHA-256 of the initial state")
    if state_commitment(state) != commitment:
        raise RemoteProtocolError("model: the round-1 weights do not match the published commitment to the "
                                  "initial state; not training on them")


# ----------------------------------------------------------------------------- the whole attack


def defence_aggregator(defence: str, clients: int, *, value_range: float, noise_multiplier: float = 0.0,
                       clip: float = 1.0, seed: int = 0) -> Aggregator:
    """The aggregator a named defence runs for a round of ``clients`` clients.

    ``none``: the plain unweighted mean (the server could also attack each update alone);
    ``secure_sum`` / ``secaggplus``: :class:`SecureSum` (full graph / SecAgg+ graph; ``_malicious``:
    the malicious-server mode), unweighted, 32 bits, quantization range ``value_range`` (per coordinate);
    ``dp_fedavg``: DP-FedAvg (clip to ``clip``, N(0, (z clip)^2) on the sum, over a secure sum planned
    for ``clients``; simulation noise seeded by ``seed``, as in the benchmark grids);
    ``distributed_dp``: distributed discrete Gaussian noise added by the clients inside the secure sum.
    """
    check_choice("defence", defence, DEFENCES)
    clients = check_int("clients", clients, minimum=2)
    value_range = check_real("value_range", value_range, gt=0.0)
    z = check_real("noise_multiplier", noise_multiplier, ge=0.0)
    clip = check_real("clip", clip, gt=0.0)
    if defence in DP_DEFENCES and z <= 0:
        raise ConfigError(f"noise_multiplier: {defence} needs a value > 0, got {noise_multiplier!r}")
    if defence == "none":
        return Mean(weighted=False)
    if defence == "dp_fedavg":
        from dp import DPFedAvg

        inner = SecureSum(value_range=clip, weighted=False, max_clients=clients)
        return DPFedAvg(clip=clip, noise_multiplier=z, expected_clients=float(clients), sample_rate=1.0,
                        sampling="none", inner=inner, simulation_seed=derive_seed(seed, "imprint-dp"))
    if defence == "distributed_dp":
        from dp import DistributedDP

        return DistributedDP(mechanism="ddg", clip=clip, noise_multiplier=z, bits=32,
                             expected_clients=clients)
    graph = "secaggplus" if defence.startswith("secaggplus") else "full"
    return SecureSum(value_range=value_range, bits=32, graph=graph, weighted=False,
                     malicious=defence.endswith("_malicious"))


def _noise_floor(aggregator: Aggregator, clients: int) -> tuple[float, float]:
    """(quantization error bound, noise std), per coordinate of the aggregate (a mean), as public."""
    from dp import DistributedDP, DPFedAvg

    if isinstance(aggregator, SecureSum):
        q = aggregator.quantizers(clients)[0]
        return q.error_bound(clients) / clients, 0.0
    if isinstance(aggregator, DPFedAvg):
        inner = aggregator.inner
        quant = (inner.quantizers(clients)[0].error_bound(clients) / aggregator.expected_clients
                 if isinstance(inner, SecureSum) else 0.0)
        return quant, aggregator.noise_std
    if isinstance(aggregator, DistributedDP):
        return 0.0, aggregator.noise_multiplier * aggregator.clip / aggregator.expected_clients
    return 0.0, 0.0


def _one_round_epsilon(aggregator: Aggregator, dim: int) -> float | None:
    with warnings.catch_warnings():  # tiny noise multipliers: the accountant warns its epsilon is loose
        warnings.simplefilter("ignore", UserWarning)
        return aggregator.epsilon_after(1, dim)


@dataclass(frozen=True)
class AttackResult:
    """One run of :func:`run_attack`. ``recovered``: (m, 1, 8, 8) images in [0, 1]; ``truth``: (n, 1, 8,
    8) the round's training examples (``clients * batch_size``); ``psnr``: (m,) per recovered image, dB
    against its best-matching true example; ``truth_psnr``: (n,) per true example, its best-matching
    recovered image; ``metrics``: the aggregator's metrics and the attack's (see :meth:`summary`)."""

    attack: str
    defence: str
    clients: int
    batch_size: int
    threshold_db: float
    recovered: torch.Tensor
    truth: torch.Tensor
    psnr: torch.Tensor
    truth_psnr: torch.Tensor
    metrics: dict[str, float | None] = field(default_factory=dict)

    @property
    def fraction_recovered(self) -> float:
        """Fraction of the round's examples with a recovered image at >= ``threshold_db``."""
        return float((self.truth_psnr >= self.threshold_db).double().mean())

    def summary(self) -> dict[str, Any]:
        """A flat row: ``psnr_mean`` / ``psnr_median`` / ``psnr_max`` over recovered images (dB, capped
        at ``PSNR_CAP_DB``; None when nothing was recovered), ``fraction_recovered``, ``candidates``,
        ``examples``, ``threshold_db`` and :attr:`metrics`."""
        capped = self.psnr.clamp(max=PSNR_CAP_DB)
        has = capped.numel() > 0
        return {"attack": self.attack, "defence": self.defence, "clients": self.clients,
                "batch_size": self.batch_size, "examples": len(self.truth), "candidates": len(self.recovered),
                "psnr_mean": float(capped.mean()) if has else None,
                "psnr_median": float(capped.median()) if has else None,
                "psnr_max": float(capped.max()) if has else None,
                "fraction_recovered": self.fraction_recovered, "threshold_db": self.threshold_db,
                **self.metrics}


def best_recovered(target: torch.Tensor, recovered: torch.Tensor) -> torch.Tensor:
    """The image of ``recovered`` (m, c, h, w) with the highest PSNR against ``target`` (c, h, w)."""
    if len(recovered) == 0:
        raise ConfigError("recovered: no images")
    values = psnr(recovered.double(), target.double().expand_as(recovered))
    return recovered[int(torch.argmax(values))]


def malicious_model(attack: str, body: nn.Module, public_x: torch.Tensor, *, bins: int,
                    examples: int, direction: str = "random", prior: str = "gaussian", seed: int = 0,
                    activation_rate: float | None = None) -> tuple[nn.Module, str]:
    """The model the server sends for ``attack`` built around ``body`` (the honest MLP), and the name
    prefix of the layer to recover from. ``bins``: imprint bins (``imprint`` only; the in-place imprint
    uses the MLP's hidden units); ``examples``: the round's expected example count, the default trap
    ``activation_rate`` (1 / examples: one example per unit on average)."""
    check_choice("attack", attack, ATTACKS)
    examples = check_int("examples", examples, minimum=1)
    features = math.prod(public_x.shape[1:])
    if attack == "imprint":
        m = imprint_direction(direction, features, seed)
        thresholds = imprint_thresholds(public_x, m, bins, prior)
        return ImprintModel(copy.deepcopy(body), m, thresholds), "imprint"
    if attack == "imprint_inplace":
        m = imprint_direction(direction, features, seed)
        model = imprint_inplace(body, m, public_x, prior=prior, seed=seed)
        return model, first_linear(model)[0]
    rate = 1.0 / examples if activation_rate is None else activation_rate
    model = trap_weights(body, public_x, activation_rate=rate, seed=seed)
    return model, first_linear(model)[0]


def run_attack(attack: str = "imprint", defence: str = "secure_sum", *, clients: int = 8, batch_size: int = 8,
               bins: int = 512, lr: float = 0.1, noise_multiplier: float = 0.0, clip: float | None = None,
               threshold_db: float = THRESHOLD_DB, direction: str = "random", prior: str = "gaussian",
               activation_rate: float | None = None, seed: int = 0) -> AttackResult:
    """One FedSGD round of ``clients`` clients (disjoint digits batches of ``batch_size``) on the
    malicious model of ``attack``, aggregated by ``defence`` (:func:`defence_aggregator`), and the
    server's recovery from the aggregate alone (see the module docstring).

    ``lr``: the clients' step size (cancels in the recovery). ``noise_multiplier``, ``clip``: the DP
    defences' z and C. Clipping scales a client's update, which cancels in the recovery, so for any C at
    or below the updates' norms only z matters, and a larger C only adds noise: the default C (None) is
    the norm of one client step on a public batch, about the updates' norms (the attacker's best case
    short of knowing them; it depends on no client's data). The secure sum's per-coordinate range is the
    server's choice: 8 x the largest coordinate of one client step on a public batch (the digits test
    split; ``clipped_fraction`` reports any coordinate it still clips). The recovery keeps candidates
    whose denominator exceeds both 4 x the quantization bound and 3 sqrt(2) x the noise std per
    coordinate (3 standard deviations of a difference of two coordinates; both public to the server).
    ``threshold_db``: PSNR at which an example counts as recovered.

    Metrics: ``baseline_psnr`` (the PSNR of the public mean image, an uninformed guess, averaged over
    the examples), ``quantization_error`` and ``noise_std`` (per coordinate of the aggregate),
    ``pixel_error_bound`` (quantization only, worst recovered image), ``epsilon`` (DP: client-level,
    this one round, delta 1e-5), ``clip``, ``value_range``, the aggregator's own metrics, ``seconds``.
    """
    started = time.perf_counter()
    check_choice("attack", attack, ATTACKS)
    check_choice("defence", defence, DEFENCES)
    clients = check_int("clients", clients, minimum=2)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    bins = check_int("bins", bins, minimum=2)
    lr = check_real("lr", lr, gt=0.0)
    threshold_db = check_real("threshold_db", threshold_db, gt=0.0)
    check_int("seed", seed, minimum=0)
    check_choice("direction", direction, DIRECTIONS)
    check_choice("prior", prior, PRIORS)
    train_x, train_y, public_x, public_y = load_digits_split(seed=0)
    if clients * batch_size > len(train_x):
        raise ConfigError(f"clients, batch_size: {clients} x {batch_size} examples exceed the "
                          f"{len(train_x)} digits training examples")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "imprint-body"))  # not secret: the honest initial model
        body = build_model("mlp", INPUT_SHAPE, NUM_CLASSES)
    model, layer = malicious_model(attack, body, public_x, bins=bins, examples=clients * batch_size,
                                   direction=direction, prior=prior, seed=seed,
                                   activation_rate=activation_rate)
    model.train(False)
    layout = ParamLayout.from_module(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    training = ClientConfig(epochs=1, batch_size=0, lr=lr, momentum=0.0)  # FedSGD: one full-batch step

    def step(x: torch.Tensor, y: torch.Tensor, who: int) -> torch.Tensor:
        return client_update(model, state, ClientData(x, y), training, layout,
                             seed=derive_seed(seed, "imprint-client", who), client_id=who).delta

    order = torch.from_numpy(numpy_rng(seed, "imprint-batches").permutation(len(train_x)))  # not secret
    idx = order[: clients * batch_size]
    truth = train_x[idx]
    own = [idx[i * batch_size:(i + 1) * batch_size] for i in range(clients)]  # disjoint batches
    updates = torch.stack([step(train_x[rows], train_y[rows], i) for i, rows in enumerate(own)])
    public = torch.from_numpy(numpy_rng(seed, "imprint-public").permutation(len(public_x))[:batch_size])
    public_step = step(public_x[public], public_y[public], clients)
    value_range = 8.0 * float(public_step.abs().max())
    if clip is None:  # the DP clip: one public client step's norm (see the docstring)
        clip = float(public_step.norm())

    aggregator = defence_aggregator(defence, clients, value_range=value_range,
                                    noise_multiplier=noise_multiplier, clip=clip, seed=seed)
    batch = UpdateBatch(updates, torch.full((clients,), float(batch_size), dtype=torch.float64),
                        tuple(range(clients)), round=0, seed=derive_seed(seed, "imprint-round"))
    aggregate = aggregator.aggregate(batch, aggregator.init_state(layout.dim))
    named = layout.unflatten(aggregate.update.to(layout.dtype))

    quant, noise = _noise_floor(aggregator, clients)
    floor = max(4.0 * quant, 3.0 * math.sqrt(2.0) * noise)
    recover = recover_imprint if attack.startswith("imprint") else recover_trap
    rec = recover(named[f"{layer}.weight"], named[f"{layer}.bias"], INPUT_SHAPE, min_denominator=floor)
    per_rec, per_truth = score(rec.images, truth)
    pixel_bound = (float((4 * quant / (rec.denominators.abs() - 2 * quant).clamp_min(1e-300)).max())
                   if len(rec.images) and quant > 0 else 0.0)
    metrics: dict[str, float | None] = {
        "baseline_psnr": float(psnr(public_x.mean(0, keepdim=True).expand_as(truth).double(),
                                    truth.double()).mean()),
        "quantization_error": quant, "noise_std": noise, "pixel_error_bound": pixel_bound,
        "value_range": value_range, "clip": clip, "update_norm_median": float(updates.norm(dim=1).median()),
        "dim": float(layout.dim), "noise_multiplier": float(noise_multiplier),
        "epsilon": _one_round_epsilon(aggregator, layout.dim) if defence in DP_DEFENCES else None,
        **{k: float(v) for k, v in aggregate.metrics.items()},
    }
    metrics["seconds"] = time.perf_counter() - started
    return AttackResult(attack, defence, clients, batch_size, threshold_db, rec.images, truth, per_rec,
                        per_truth, metrics)


def save_comparison(path: str | Path, truth: torch.Tensor, rows: Sequence[tuple[str, torch.Tensor]],
                    title: str) -> Path:
    """A PNG grid (matplotlib, Agg): the true images ``truth`` (k, 1, h, w) on top, then one row per
    ``(label, recovered)`` holding, for each true image, the best-matching image of ``recovered``
    (blank where it recovered nothing)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(truth)
    if k == 0:
        raise ConfigError("truth: no images to show")
    fig, axes = plt.subplots(1 + len(rows), k, figsize=(0.9 * k + 1.6, 1.0 * (1 + len(rows)) + 0.5),
                             squeeze=False)
    labels = ["true", *[label for label, _ in rows]]
    for j in range(k):
        images = [truth[j], *[best_recovered(truth[j], rec) if len(rec) else None for _, rec in rows]]
        for i, image in enumerate(images):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if image is not None:
                ax.imshow(image[0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            if j == 0:
                ax.set_ylabel(labels[i], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
