"""Poisoning and inference attacks and the suite that runs them against configurations.

May import ``dp`` and ``secagg``; nothing below imports this package. Importing it registers every
attack kind (the names benchmark config files use).
"""

from attacks.adaptive import AdaptiveALIE, AdaptiveIPM
from attacks.backdoors import DistributedBackdoor, Neurotoxin
from attacks.base import AttackContext, UpdateAttack
from attacks.byzantine import ByzantineClients
from attacks.data_poisoning import Backdoor, DataAttack, LabelFlip, ModelReplacement
from attacks.fang import FangKrum, FangTrim
from attacks.gan_leaks import GANLeaksResult, fbb_scores  # gan_leaks(): import it from its module
from attacks.model_poisoning import ALIE, IPM, GaussianNoise, Mimic, MinMax, MinSum, Scaling, SignFlip, alie_z

__all__ = [
    "ALIE",
    "IPM",
    "AdaptiveALIE",
    "AdaptiveIPM",
    "AttackContext",
    "Backdoor",
    "ByzantineClients",
    "DataAttack",
    "DistributedBackdoor",
    "FangKrum",
    "FangTrim",
    "GANLeaksResult",
    "GaussianNoise",
    "LabelFlip",
    "Mimic",
    "MinMax",
    "MinSum",
    "ModelReplacement",
    "Neurotoxin",
    "Scaling",
    "SignFlip",
    "UpdateAttack",
    "alie_z",
    "fbb_scores",
]
