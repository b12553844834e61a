"""Server-side combine rules: the aggregator interface and its built-in implementations."""

from secagg.aggregation.base import (
    Aggregate,
    Aggregator,
    AggState,
    UpdateBatch,
    Wrapper,
    aggregator_kinds,
    nest_state,
    unnest_state,
)
from secagg.aggregation.bucketing import Bucketing
from secagg.aggregation.bulyan import Bulyan
from secagg.aggregation.centered_clipping import CenteredClipping
from secagg.aggregation.clip import ClipNorm
from secagg.aggregation.geomed import GeometricMedian
from secagg.aggregation.krum import Krum, MultiKrum
from secagg.aggregation.mean import Mean
from secagg.aggregation.median import CoordinateMedian
from secagg.aggregation.nnm import NearestNeighbourMixing
from secagg.aggregation.secure import SecureSum
from secagg.aggregation.secure_bucketing import SecureBucketing
from secagg.aggregation.trimmed_mean import TrimmedMean

__all__ = [
    "AggState",
    "Aggregate",
    "Aggregator",
    "Bucketing",
    "Bulyan",
    "CenteredClipping",
    "ClipNorm",
    "CoordinateMedian",
    "GeometricMedian",
    "Krum",
    "Mean",
    "MultiKrum",
    "NearestNeighbourMixing",
    "SecureBucketing",
    "SecureSum",
    "TrimmedMean",
    "UpdateBatch",
    "Wrapper",
    "aggregator_kinds",
    "nest_state",
    "unnest_state",
]
