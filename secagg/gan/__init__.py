"""Federated GANs: a generator/discriminator pair trained with FedAvg through the whole aggregation
pipeline (secure aggregation, robust rules, client-level DP), and the metrics that show mode collapse.

* :mod:`secagg.gan.models`: :class:`GANPair`, the federated model (one update vector for both halves).
* :mod:`secagg.gan.trainer`: :class:`GANTrainer`, the ``"gan"`` client trainer (a discriminator step
  on the client's data, then a generator step; optionally against the global discriminator, as in
  DP-FedAvg-GAN; the privacy argument is in its docstring).
* :mod:`secagg.gan.metrics`: the evaluator classifier, mode coverage and the Frechet distance.
* :mod:`secagg.gan.task`: the task factory of ``secagg train --task gan`` and its evaluation.
* :mod:`secagg.gan.report`: image grids and metric curves (matplotlib, imported when used).

Importing this package registers the ``"gan"`` trainer kind (needed to load a saved GAN
configuration).
"""

from secagg.gan.metrics import Evaluator, frechet_distance, mode_coverage, train_evaluator
from secagg.gan.models import GANPair, discriminator_slice, generator_slice
from secagg.gan.task import (
    GANEvaluation,
    GANTask,
    build_gan_task,
    gan_experiment,
    gan_task_with_reserve,
)
from secagg.gan.trainer import GANTrainer

__all__ = [
    "Evaluator",
    "GANEvaluation",
    "GANPair",
    "GANTask",
    "GANTrainer",
    "build_gan_task",
    "discriminator_slice",
    "frechet_distance",
    "gan_experiment",
    "gan_task_with_reserve",
    "generator_slice",
    "mode_coverage",
    "train_evaluator",
]
