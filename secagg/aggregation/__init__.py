"""Server-side combine rules: the aggregator interface and its built-in implementations."""

from secagg.aggregation.arc import AdaptiveRobustClipping
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
from secagg.aggregation.dnc import DnC
from secagg.aggregation.flame import FLAME
from secagg.aggregation.fltrust import FLTrust
from secagg.aggregation.foolsgold import FoolsGold
from secagg.aggregation.geomed import GeometricMedian
from secagg.aggregation.hierarchical import HierarchicalSecureSum
from secagg.aggregation.krum import Krum, MultiKrum
from secagg.aggregation.mda import MinimumDiameterAveraging
from secagg.aggregation.meamed import Meamed
from secagg.aggregation.mean import Mean
from secagg.aggregation.median import CoordinateMedian
from secagg.aggregation.monna import MoNNA
from secagg.aggregation.nnm import NearestNeighbourMixing
from secagg.aggregation.rlr import RobustLearningRate
from secagg.aggregation.secure import SecureSum, secure_encoding
from secagg.aggregation.secure_bucketing import SecureBucketing
from secagg.aggregation.signguard import SignGuard
from secagg.aggregation.trimmed_mean import TrimmedMean

__all__ = [
    "FLAME",
    "AdaptiveRobustClipping",
    "AggState",
    "Aggregate",
    "Aggregator",
    "Bucketing",
    "Bulyan",
    "CenteredClipping",
    "ClipNorm",
    "CoordinateMedian",
    "DnC",
    "FLTrust",
    "FoolsGold",
    "GeometricMedian",
    "HierarchicalSecureSum",
    "Krum",
    "Meamed",
    "Mean",
    "MinimumDiameterAveraging",
    "MoNNA",
    "MultiKrum",
    "NearestNeighbourMixing",
    "RobustLearningRate",
    "SecureBucketing",
    "SecureSum",
    "SignGuard",
    "TrimmedMean",
    "UpdateBatch",
    "Wrapper",
    "aggregator_kinds",
    "nest_state",
    "secure_encoding",
    "unnest_state",
]
