"""Differential privacy for federated learning, on top of ``secagg``.

Importing ``dp`` registers its aggregators and trainers, so configurations naming them load:

* :class:`~dp.central.DPFedAvg`: central DP-FedAvg (clip, sum, Gaussian noise; trusted server);
* :class:`~dp.adaptive.AdaptiveClipDP`: DP-FedAvg with the clip norm tracking a quantile;
* :class:`~dp.local.LocalDP`: every client clips and noises its own update (no trusted party);
* :class:`~dp.distributed.DistributedDP`: integer noise inside secure aggregation (DDG, Skellam);
* :class:`~dp.dpsgd.DPSGDTrainer`: record-level DP-SGD in local training;
* :class:`~dp.audit.CanaryAudit`: an empirical privacy audit in the same run (random canary clients);
* :mod:`dp.accounting`: the privacy accountants; :mod:`dp.noise`, :mod:`dp.gaussian`: CSPRNG noise.

Depends on ``secagg`` only, never on ``attacks``.
"""

from dp.accounting import GaussianAccountant, local_gaussian_epsilon, noise_multiplier_for
from dp.adaptive import AdaptiveClipDP
from dp.audit import CanaryAudit
from dp.central import DPFedAvg, clip_rows
from dp.distributed import DistributedDP
from dp.dpsgd import DPSGDTrainer
from dp.gaussian import gaussian
from dp.local import LocalDP

__all__ = [
    "AdaptiveClipDP",
    "CanaryAudit",
    "DPFedAvg",
    "DPSGDTrainer",
    "DistributedDP",
    "GaussianAccountant",
    "LocalDP",
    "clip_rows",
    "gaussian",
    "local_gaussian_epsilon",
    "noise_multiplier_for",
]
