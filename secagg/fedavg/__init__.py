"""FedAvg (McMahan et al. 2017): local client training and the server round."""

from secagg.fedavg.client import ClientUpdate, client_update
from secagg.fedavg.config import ClientConfig, FedAvgConfig
from secagg.fedavg.optimizers import ServerAdagrad, ServerAdam, ServerOptimizer, ServerSGD, ServerYogi
from secagg.fedavg.server import FedAvg, RoundResult, ServerState, evaluate
from secagg.fedavg.trainer import ClientTrainer, SGDTrainer

__all__ = [
    "ClientConfig",
    "ClientTrainer",
    "ClientUpdate",
    "FedAvg",
    "FedAvgConfig",
    "RoundResult",
    "SGDTrainer",
    "ServerAdagrad",
    "ServerAdam",
    "ServerOptimizer",
    "ServerSGD",
    "ServerState",
    "ServerYogi",
    "client_update",
    "evaluate",
]
