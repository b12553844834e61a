"""Privacy-hardened federated learning: the FedAvg core, aggregation and secure aggregation.

The names below are the stable public API; submodules hold the details.
"""

__version__ = "0.1.0"

from secagg.aggregation import Aggregate, Aggregator, ClipNorm, Mean, SecureSum, UpdateBatch
from secagg.data.federated import ClientData, FederatedDataset
from secagg.data.partition import (
    PartitionConfig,
    dirichlet_partition,
    iid_partition,
    label_skew,
    shard_partition,
)
from secagg.errors import (
    AbortError,
    CheckpointError,
    ConfigError,
    DataError,
    ProtocolError,
    SecAggError,
    UpdateError,
)
from secagg.experiment import ExperimentConfig, ExperimentResult, run_experiment
from secagg.fedavg import (
    ClientConfig,
    ClientUpdate,
    FedAvg,
    FedAvgConfig,
    ServerState,
    client_update,
    evaluate,
)
from secagg.layout import ParamLayout
from secagg.models import build_model, register_model
from secagg.protocol import SessionParams, run_session, secaggplus_parameters
from secagg.quantize import Quantizer
from secagg.task import Task, TaskConfig, build_task

__all__ = [
    "AbortError",
    "Aggregate",
    "Aggregator",
    "CheckpointError",
    "ClientConfig",
    "ClientData",
    "ClientUpdate",
    "ClipNorm",
    "ConfigError",
    "DataError",
    "ExperimentConfig",
    "ExperimentResult",
    "FedAvg",
    "FedAvgConfig",
    "FederatedDataset",
    "Mean",
    "ParamLayout",
    "PartitionConfig",
    "ProtocolError",
    "Quantizer",
    "SecAggError",
    "SecureSum",
    "ServerState",
    "SessionParams",
    "Task",
    "TaskConfig",
    "UpdateBatch",
    "UpdateError",
    "__version__",
    "build_model",
    "build_task",
    "client_update",
    "dirichlet_partition",
    "evaluate",
    "iid_partition",
    "label_skew",
    "register_model",
    "run_experiment",
    "run_session",
    "secaggplus_parameters",
    "shard_partition",
]
