"""Bucketing in front of any rule (Karimireddy, He and Jaggi, ICLR 2022).

Each round the updates are shuffled, cut into buckets of ``bucket_size`` (the last one may be
smaller) and averaged per bucket; the inner rule then sees ``ceil(n / bucket_size)`` bucket means.
Averaging honest updates shrinks their spread (helps rules such as Krum and the median under
non-IID data); an attacker now controls at most its own buckets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch, Wrapper
from secagg.aggregation.mean import Mean
from secagg.seeding import torch_generator
from secagg.validation import check_int


@dataclass(frozen=True)
class Bucketing(Wrapper, kind="bucketing"):
    """Average random buckets of ``bucket_size`` updates, then aggregate the means with ``inner``.

    The shuffle is drawn from the round's seed (fresh every round, reproducible, not secret). Each
    bucket mean is unweighted; the inner rule receives each bucket's summed example count as its
    weight, so ``Bucketing(inner=Mean())`` is the example-weighted mean of equal-size bucket means.
    """

    bucket_size: int = 2
    inner: Aggregator = field(default_factory=Mean)

    def __post_init__(self) -> None:
        check_int("bucket_size", self.bucket_size, minimum=1)
        super().__post_init__()

    def buckets(self, batch: UpdateBatch) -> list[torch.Tensor]:
        """The row indices of each bucket for this batch's round (a partition of ``range(n)``)."""
        order = torch.randperm(batch.num_clients, generator=torch_generator(batch.seed, "bucketing"))
        return list(order.split(self.bucket_size))

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        groups = self.buckets(batch)
        means = torch.stack([batch.updates[idx].mean(dim=0) for idx in groups])
        weights = torch.stack([batch.weights[idx].sum() for idx in groups])
        inner_batch = UpdateBatch(means, weights, tuple(range(len(groups))), batch.round, batch.seed,
                                  batch.layout, batch.reference)
        return self.run_inner(inner_batch, state, buckets=float(len(groups)))
