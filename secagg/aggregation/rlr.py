"""Robust learning rate, RLR (Ozdayi, Kantarcioglu and Gel, AAAI 2021, "Defending against Backdoors
in Federated Learning with Robust Learning Rate").

A backdoor needs some coordinates moved in a direction the honest clients do not agree on. RLR
lets the clients vote, per coordinate, with the signs of their updates: where fewer than ``theta``
net votes agree, the server's learning rate for that coordinate is negated, so the step there moves
*against* the aggregate (undoing what a minority pushed); elsewhere it is kept::

    lr_j = +1  if |sum_i sign(u_ij)| >= theta,   -1 otherwise
    g    = lr * inner(u)        (coordinate-wise product)

In the paper (and the authors' code) the aggregate is the example-weighted FedAvg mean
``sum_i n_i u_i / sum_i n_i``, and the vote is over the raw, unweighted updates; other inner rules
(the coordinate-wise median, the sign) are used there as well, which is why RLR is a wrapper: the
vote comes from the batch as received, then multiplies whatever ``inner`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch, Wrapper
from secagg.aggregation.mean import Mean
from secagg.layout import ParamLayout
from secagg.validation import check_int

CHUNK = 1 << 16  # columns per block of the vote: keeps the (n, block) temporaries small


def sign_votes(updates: torch.Tensor) -> torch.Tensor:
    """(d,) ``sum_i sign(u_ij)`` per coordinate (a zero entry votes 0), in float32 (float64 for
    float64 input): exact, as every count is an integer of magnitude at most ``n``.

    One column block at a time (no (n, d) temporary): each block's signs are summed by a
    vector-matrix product, which runs several times faster than a boolean count along the clients.
    """
    d = updates.shape[1]
    dtype = torch.float64 if updates.dtype == torch.float64 else torch.float32
    ones = torch.ones(updates.shape[0], dtype=dtype)
    out = torch.empty(d, dtype=dtype)
    for start in range(0, d, CHUNK):  # column blocks, not clients
        out[start:start + CHUNK] = ones @ torch.sign(updates[:, start:start + CHUNK]).to(dtype)
    return out


def parameter_mask(layout: ParamLayout | None, dim: int) -> torch.Tensor | None:
    """(d,) bool: the coordinates that belong to trainable parameters, or ``None`` when all do (no
    layout, or a layout without buffers)."""
    if layout is None or all(s.kind == "parameter" for s in layout.specs):
        return None
    mask = torch.zeros(dim, dtype=torch.bool)
    for spec in layout.specs:  # a handful of tensors
        if spec.kind == "parameter":
            mask[spec.offset:spec.offset + spec.numel] = True
    return mask


@dataclass(frozen=True)
class RobustLearningRate(Wrapper, kind="rlr"):
    """Negate the aggregate on every coordinate whose sign vote is weaker than ``theta``.

    ``theta`` (>= 1, default 4, the authors' setting for 10 clients with 1 attacker): the paper
    advises a value above the number of attackers and at most half the clients. With ``theta > n``
    every coordinate is negated. ``inner`` (default :class:`Mean`, the example-weighted FedAvg
    mean of the paper): the rule whose output is multiplied.

    Rule: ``lr_j = +1`` when ``|sum_i sign(u_ij)| >= theta`` else ``-1``, output ``lr * inner(u)``.
    When all updates agree in sign on every coordinate (and ``n >= theta``) the output is the inner
    aggregate unchanged. The vote counts each client once, whatever its example count.

    Buffers (BatchNorm running statistics, which the library aggregates with the parameters) keep
    ``lr = +1``: the authors' code applies the vector to the model's parameters only, and a negated
    running variance step could make the variance negative.

    An inner DP rule is refused (the vote makes every coordinate depend on all clients, which the
    inner rule's sensitivity does not account for). Logs ``flipped_fraction`` (of the coordinates
    whose learning rate was negated).
    """

    theta: int = 4
    inner: Aggregator = field(default_factory=Mean)

    def __post_init__(self) -> None:
        check_int("theta", self.theta, minimum=1)
        super().__post_init__()

    def learning_rates(self, batch: UpdateBatch) -> torch.Tensor:
        """(d,) +1/-1 in the batch's dtype: the per-coordinate learning-rate signs of this round."""
        strong = sign_votes(batch.updates.detach()).abs() >= self.theta
        params = parameter_mask(batch.layout, batch.dim)
        if params is not None:
            strong |= ~params
        lr = torch.ones(batch.dim, dtype=batch.updates.dtype)
        lr[~strong] = -1.0
        return lr

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        lr = self.learning_rates(batch)
        flipped = float((lr < 0).to(torch.float64).mean())
        inner = self.run_inner(batch, state, flipped_fraction=flipped)
        return Aggregate(inner.update * lr.to(inner.update.dtype), inner.state, inner.metrics)
