"""FLTrust (Cao, Fang, Liu and Gong, NDSS 2021, "FLTrust: Byzantine-robust Federated Learning via
Trust Bootstrapping").

The server holds a small clean *root dataset* and trains on it each round, from the same global
model and with the clients' local configuration, to get its own update ``g0`` (the batch's
:attr:`~secagg.aggregation.base.UpdateBatch.reference`). Each client update ``g_i`` is then trusted
in proportion to how much it agrees with ``g0`` in direction, and counts with the magnitude of
``g0``, not its own::

    TS_i = ReLU(cos(g_i, g0))
    g    = sum_i TS_i * (||g0|| / ||g_i||) * g_i  /  sum_i TS_i

An update pointing away from ``g0`` (cosine <= 0) gets no weight, and boosting an update (scaling
it by any ``c > 0``) changes nothing, since it is rescaled to ``||g0||``. The output's norm is at
most ``||g0||``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.errors import UpdateError
from secagg.validation import check_choice, check_int

#: what FLTrust returns when no client has positive trust
ZERO_TRUST = ("zero", "mean")


def trust_scores(updates: torch.Tensor, reference: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(TS, rescale, ||g0||)`` for an (n, d) stack and the (d,) root update ``g0``, same dtype:
    ``TS_i = max(0, cos(g_i, g0))`` (float64; 0 for a zero row or a zero ``g0``) and
    ``rescale_i = ||g0|| / ||g_i||`` (float64; 0 for a zero row). Two passes over the stack."""
    dots = (updates @ reference).to(torch.float64)
    norms = torch.linalg.vector_norm(updates, dim=1).to(torch.float64)
    ref_norm = float(torch.linalg.vector_norm(reference))
    tiny = torch.finfo(torch.float64).tiny
    denom = norms * ref_norm
    cos = torch.where(denom > 0, dots / denom.clamp_min(tiny), 0.0)
    rescale = torch.where(norms > 0, ref_norm / norms.clamp_min(tiny), 0.0)
    return cos.clamp(min=0.0, max=1.0), rescale, ref_norm


@dataclass(frozen=True)
class FLTrust(Aggregator, kind="fltrust"):
    """FLTrust: the trust-weighted mean of the client updates rescaled to the server's root update.

    ``root_size`` (>= 1, default 100 as in the paper's evaluation): how many examples the server's
    clean root dataset holds (:meth:`root_examples`). This is a first-class part of the
    configuration: the defence is only as good as the root data, which the server must collect
    itself (the paper: 100 examples suffice). In simulation the root set is drawn without
    replacement from the union of the clients' training data, with a public seed
    (:func:`secagg.fedavg.server.root_data`), and the server's update ``batch.reference`` is plain
    local SGD on it with the clients' local configuration; a deployment passes its own.
    (The field is not called ``root_examples`` because that is the method every aggregator has.)

    Rule (the paper's Algorithm 2, unweighted by example counts like the other robust rules):
    ``TS_i = max(0, cos(g_i, g0))`` (a zero update has trust 0), then
    ``sum_i TS_i ||g0|| / ||g_i|| g_i / sum_i TS_i``.

    ``zero_trust``: what to return when every trust score is 0 (every update points away from
    ``g0``, or ``g0 = 0``): ``"zero"`` (default) a zero update, no step this round, as the authors'
    code does (its ``+1e-9`` in the denominator makes the result 0); ``"mean"`` the plain mean of
    the rescaled updates, as FLPoison does. Logged either way as ``zero_trust`` (1.0 or 0.0).

    Raises :class:`UpdateError` naming ``reference`` when the batch carries no root update.
    Logs ``trusted_count`` (clients with positive trust), ``trust_sum``, ``reference_norm`` and
    ``zero_trust``.
    """

    root_size: int = 100
    zero_trust: str = "zero"

    def __post_init__(self) -> None:
        check_int("root_size", self.root_size, minimum=1)
        check_choice("zero_trust", self.zero_trust, ZERO_TRUST)

    def root_examples(self) -> int:
        return self.root_size

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        if batch.reference is None:
            raise UpdateError("reference: FLTrust needs the server's root-data update in "
                              "batch.reference (the server trains one each round on its "
                              f"{self.root_size} root examples), got None")
        u = batch.updates.detach()
        g0 = batch.reference.detach().to(device=u.device, dtype=u.dtype)
        ts, rescale, ref_norm = trust_scores(u, g0)
        total = float(ts.sum())
        zero = total <= 0.0
        if not zero:
            coef = ts * rescale / total
        elif self.zero_trust == "mean":
            coef = rescale / batch.num_clients
        else:
            coef = torch.zeros_like(rescale)
        # one pass over the stack: (n,) coefficients times (n, d) rows, in the rows' dtype
        update = coef.to(u.dtype) @ u
        metrics = {"trusted_count": float((ts > 0).sum()), "trust_sum": total,
                   "reference_norm": ref_norm, "zero_trust": float(zero)}
        return Aggregate(update=update, state=dict(state), metrics=metrics)
