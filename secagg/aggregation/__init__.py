"""Server-side combine rules: the aggregator interface and its built-in implementations."""

from secagg.aggregation.base import (
    Aggregate,
    Aggregator,
    AggState,
    UpdateBatch,
    aggregator_kinds,
    nest_state,
    unnest_state,
)
from secagg.aggregation.bucketing import Bucketing
from secagg.aggregation.clip import ClipNorm
from secagg.aggregation.mean import Mean
from secagg.aggregation.secure import SecureSum

__all__ = [
    "AggState",
    "Aggregate",
    "Aggregator",
    "Bucketing",
    "ClipNorm",
    "Mean",
    "SecureSum",
    "UpdateBatch",
    "aggregator_kinds",
    "nest_state",
    "unnest_state",
]
