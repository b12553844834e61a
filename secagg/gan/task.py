"""The federated GAN task (``secagg train --task gan``): data, the :class:`GANPair`, its evaluation.

:func:`build_gan_task` is a task factory (``function(config, seed) -> Task``, see
:mod:`secagg.task`): it loads and partitions the data exactly like the bundled task (digits by
default; the partition flags give IID or non-IID clients, e.g. label shards), builds a
:class:`~secagg.gan.models.GANPair` for the data's image shape, and attaches a
:class:`GANEvaluation`, which the FedAvg server calls each round instead of classifier accuracy (the
pair's ``evaluate_state``). :func:`gan_experiment` is the tuned starting configuration the command
line uses for ``--task gan`` (the classifier defaults of :class:`~secagg.experiment.ExperimentConfig`
do not train a GAN).

The evaluation's classifier is trained once per task on the held-out (test) split, never on the
clients' training data (:func:`~secagg.gan.metrics.train_evaluator`); its accuracy on the training
split is recorded as a sanity figure (``evaluator_train_accuracy``). Generated samples for evaluation
and for the image grids come from fixed seeded latent batches, so rounds are comparable.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from secagg.data.datasets import federate, load_dataset, subsample
from secagg.data.federated import ClientData, FederatedDataset
from secagg.data.partition import PartitionConfig
from secagg.errors import ConfigError
from secagg.experiment import ExperimentConfig
from secagg.fedavg.config import ClientConfig, FedAvgConfig
from secagg.gan.metrics import Evaluator, frechet_distance, mode_coverage, train_evaluator
from secagg.gan.models import GANPair
from secagg.gan.trainer import GANTrainer
from secagg.seeding import derive_seed, numpy_rng, torch_generator
from secagg.task import Task, TaskConfig
from secagg.validation import check_int

__all__ = ["GANEvaluation", "GANTask", "build_gan_task", "gan_experiment", "gan_task_with_reserve",
           "state_half"]

#: generated samples per evaluation (the label histogram and the Frechet fit)
EVAL_SAMPLES = 1000
#: images in a grid (10 x 10)
GRID_SAMPLES = 100


def state_half(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of a :class:`GANPair` state dict under ``prefix`` (``"generator"`` or
    ``"discriminator"``), with the prefix removed (a state dict for that submodule)."""
    cut = prefix + "."
    return {k[len(cut):]: v for k, v in state_dict.items() if k.startswith(cut)}


def load_half(module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str) -> nn.Module:
    """A copy of ``module`` (a pair's generator or discriminator) loaded with its half of
    ``state_dict``, in evaluation mode."""
    net = copy.deepcopy(module)
    net.load_state_dict(state_half(state_dict, prefix), strict=True)
    net.train(False)
    return net


@dataclass(eq=False)
class GANEvaluation:
    """Per-round metrics of a federated GAN (attached to a :class:`GANPair` as ``pair.evaluation``).

    ``evaluator``: the classifier trained on the held-out split; ``num_classes``: K. ``latents``: the
    fixed (``EVAL_SAMPLES``, latent_dim) batch the metrics generate from; ``grid_latents``: the fixed
    batch of the image grids. ``evaluator_train_accuracy``: the evaluator's accuracy on the training
    split (fraction), reported with every round.

    :meth:`evaluate` returns (fractions in [0, 1], losses in nats): ``modes_covered`` and ``mode_kl``
    (:func:`~secagg.gan.metrics.mode_coverage`), ``frechet`` (generated vs the held-out ``x``, in the
    evaluator's feature space: :func:`~secagg.gan.metrics.frechet_distance`), ``d_accuracy_real`` and
    ``d_accuracy_fake`` (the discriminator's accuracy on ``x`` and on the generated batch, threshold
    logit 0), ``accuracy`` (their mean: the discriminator's balanced real/fake accuracy, what a run's
    accuracy columns show for a GAN) and ``loss`` (the discriminator's loss on them,
    ``mean softplus(-D(real)) + mean softplus(D(fake))``), and ``evaluator_train_accuracy``.
    """

    evaluator: Evaluator
    num_classes: int
    latents: torch.Tensor
    grid_latents: torch.Tensor
    evaluator_train_accuracy: float
    grid_every: int = 10
    _real_features: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def __deepcopy__(self, memo: dict[int, Any]) -> GANEvaluation:
        # every client's copy of the pair (the trainer deep-copies it) shares the one evaluation: it
        # is read-only (a frozen evaluator, fixed latents) but for the cache of the held-out features
        return self

    def generate(self, pair: GANPair, state_dict: dict[str, torch.Tensor],
                 latents: torch.Tensor | None = None) -> torch.Tensor:
        """Images from the pair's generator loaded with ``state_dict`` (default latents: the metrics'
        fixed batch)."""
        gen = load_half(pair.generator, state_dict, "generator")
        with torch.no_grad():
            return gen(self.latents if latents is None else latents)

    def _features_of(self, x: torch.Tensor) -> torch.Tensor:
        # the server passes the same held-out tensor every round: embed it once (holding a reference,
        # so the identity test cannot match a new tensor at a recycled address)
        if self._real_features is None or self._real_features[0] is not x:
            self._real_features = (x, self.evaluator.features(x))
        return self._real_features[1]

    def evaluate(self, pair: GANPair, state_dict: dict[str, torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor) -> dict[str, float]:
        fake = self.generate(pair, state_dict)
        disc = load_half(pair.discriminator, state_dict, "discriminator")
        with torch.no_grad():
            d_real, d_fake = disc(x), disc(fake)
        softplus = nn.functional.softplus
        real_acc, fake_acc = float((d_real > 0).double().mean()), float((d_fake < 0).double().mean())
        return {
            "accuracy": 0.5 * (real_acc + fake_acc),
            "loss": float(softplus(-d_real).mean() + softplus(d_fake).mean()),
            **mode_coverage(self.evaluator.predict(fake), self.num_classes),
            "frechet": frechet_distance(self.evaluator.features(fake), self._features_of(x)),
            "d_accuracy_real": real_acc,
            "d_accuracy_fake": fake_acc,
            "evaluator_train_accuracy": self.evaluator_train_accuracy,
        }

    def write_artifacts(self, pair: GANPair, state_dict: dict[str, torch.Tensor], out_dir: str | Path,
                        round_index: int, history: list[dict[str, Any]], *,
                        final: bool = False) -> list[Path]:
        """Every ``grid_every`` rounds, at round 1 and when ``final``: write ``grid_round_<r>.png``
        (the fixed grid latents through the generator; the latest also as ``grid.png``) and
        ``gan_metrics.png`` (modes covered, mode KL and Frechet distance per round, from ``history``).
        Returns the paths written (none in other rounds)."""
        if not (final or round_index == 1 or round_index % self.grid_every == 0):
            return []
        from secagg.gan.report import plot_gan_curves, save_grid  # matplotlib: only when writing

        images = self.generate(pair, state_dict, self.grid_latents)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        title = f"generated digits, round {round_index}"
        return [save_grid(images, out / f"grid_round_{round_index:04d}.png", title=title),
                save_grid(images, out / "grid.png", title=title),
                plot_gan_curves({"global model": history}, out / "gan_metrics.png",
                                num_classes=self.num_classes)]


@dataclass(frozen=True)
class GANTask:
    """A GAN task plus the examples it kept from every client (``reserve``: the non-members of a
    membership attack, drawn uniformly from the same training split as the clients' data)."""

    task: Task
    reserve: ClientData


def gan_task_with_reserve(config: TaskConfig, seed: int, *, reserve: int = 0, latent_dim: int = 16,
                          hidden: int = 128, grid_every: int = 10) -> GANTask:
    """:func:`build_gan_task` keeping ``reserve`` training examples (a seeded uniform draw) out of
    every client: they are in no client's partition (nor anywhere in the task), and are returned as
    ``GANTask.reserve``. ``config.model`` must be left at its default ("mlp"): the task builds its own
    :class:`GANPair` (``latent_dim``, ``hidden``). Raises :class:`ConfigError`."""
    if not isinstance(config, TaskConfig):
        raise ConfigError(f"task: expected a TaskConfig, got {type(config).__name__}")
    check_int("reserve", reserve, minimum=0)
    if config.model != TaskConfig().model:
        raise ConfigError(f"model: the gan task builds its own secagg.gan.GANPair; leave model at "
                          f"{TaskConfig().model!r} (got {config.model!r})")
    if config.partition.kind == "natural" and reserve:
        raise ConfigError("reserve: the natural partition keeps whole writers; reserve needs another "
                          "partition kind")
    split = load_dataset(config.dataset, config.data, test_fraction=config.test_fraction,
                         seed=derive_seed(seed, "split") % 2**32)
    split = subsample(split, train_size=config.train_size, seed=derive_seed(seed, "subsample"))
    if split.train_x.ndim < 2:
        raise ConfigError(f"dataset: the gan task needs inputs with a shape, got "
                          f"{tuple(split.train_x.shape)}")
    if not bool(((split.train_x >= 0) & (split.train_x <= 1)).all()):
        raise ConfigError(f"dataset: the gan task's generator outputs values in (0, 1) (sigmoid); "
                          f"{config.dataset}'s inputs leave [0, 1]")
    n = int(split.train_y.shape[0])
    if reserve >= n:
        raise ConfigError(f"reserve: must be < the {n} training examples, got {reserve}")
    held = np.sort(numpy_rng(seed, "gan-reserve").choice(n, size=reserve, replace=False))
    kept = torch.from_numpy(np.setdiff1d(np.arange(n), held))
    held_t = torch.from_numpy(held.astype(np.int64))
    reserve_data = ClientData(split.train_x[held_t], split.train_y[held_t])
    evaluator_acc_x, evaluator_acc_y = split.train_x, split.train_y
    if reserve:
        split = dataclasses.replace(
            split, train_x=split.train_x[kept], train_y=split.train_y[kept],
            train_writers=None if split.train_writers is None else split.train_writers[kept.numpy()],
            train_site_key=None if split.train_site_key is None else split.train_site_key[kept.numpy()])
    split, partition = federate(split, config.partition, config.num_clients,
                                seed=derive_seed(seed, "partition"))
    split = subsample(split, test_size=config.test_size, seed=derive_seed(seed, "subsample"))
    data = FederatedDataset(split.train_x, split.train_y, split.test_x, split.test_y, partition,
                            split.num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        pair = GANPair(data.input_shape, latent_dim=latent_dim, hidden=hidden)
    evaluator = train_evaluator(data.test_x, data.test_y, data.num_classes,
                                seed=derive_seed(seed, "evaluator"))
    train_acc = float((evaluator.predict(evaluator_acc_x) == evaluator_acc_y).double().mean())
    pair.evaluation = GANEvaluation(
        evaluator, data.num_classes,
        latents=torch.randn(EVAL_SAMPLES, latent_dim, generator=torch_generator(seed, "gan-eval-latents")),
        grid_latents=torch.randn(GRID_SAMPLES, latent_dim, generator=torch_generator(seed, "gan-grid")),
        evaluator_train_accuracy=train_acc, grid_every=grid_every)
    return GANTask(Task(data, pair), reserve_data)


def build_gan_task(config: TaskConfig, seed: int) -> Task:
    """The task factory of ``--task gan``: :func:`gan_task_with_reserve` with no reserve."""
    return gan_task_with_reserve(config, seed).task


def gan_experiment(rounds: int = 200, num_clients: int = 10,
                   partition: PartitionConfig | None = None, seed: int = 0) -> ExperimentConfig:
    """The starting configuration of ``secagg train --task gan`` (flags override it): digits split
    across ``num_clients`` clients (IID unless ``partition``), every client in every round, each
    running :class:`GANTrainer` (10 local steps, batches of 32, Adam at lr 2e-3, betas (0, 0.99), for
    both halves, the generator against the local discriminator), plain FedAvg on the server, 200
    rounds. Tuned so that IID clients cover most digits (9.4 of 10 over seeds 0-2: the README's
    "Federated GANs")."""
    return ExperimentConfig(
        task=TaskConfig(num_clients=num_clients, partition=partition or PartitionConfig()),
        fedavg=FedAvgConfig(rounds=rounds, fraction=1.0,
                            client=ClientConfig(epochs=1, batch_size=32, lr=2e-3),
                            trainer=GANTrainer(steps=10)),
        seed=seed)
