"""The federated task: which dataset, how it is split across clients, and which model learns it.

The built-in task (:func:`build_task`) trains on digits (bundled with scikit-learn, the default), on
breast-cancer (scikit-learn's Wisconsin diagnostic table, also bundled: ``--task breast-cancer`` picks
it with the ``tabular`` model, see :data:`TASKS`; its natural partition is a split into sites that
differ in case mix) or on a real data set read from local files in its standard format: ``mnist``,
``fashion-mnist``, ``cifar10``, ``femnist`` (LEAF, with its natural by-writer partition) or
``medmnist:<name>`` (:mod:`secagg.data.datasets` lists the files each expects under ``data``). Nothing
is downloaded. The test set is the data set's own test split; digits and breast-cancer, which have
none, keep a seeded stratified split (``test_fraction``). In a deployment every process must load the
same data, but the data path is this machine's: a client never reads the path in the server's
configuration (:func:`local_data_factory`).

A user's own model and data come from a *task
factory*, named ``"module:function"`` (``secagg train/serve/client --task``): ``function(config,
seed)`` gets the run's :class:`TaskConfig` (``num_clients``...) and root seed and returns a
:class:`Task` (a :class:`~secagg.data.federated.FederatedDataset` partitioned into
``config.num_clients`` clients, and the initial model). Every process of a deployment must name the
same factory and reach the same model: clients check the server's weights against their model. The
factory is named on each machine's command line, never taken from the server's configuration (a
server must not make a client import code).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secagg.config_io import from_plain, to_plain
from secagg.data.datasets import (
    NAMES,
    check_dataset,
    expected_files,
    federate,
    has_natural_partition,
    has_writers,
    is_bundled,
    load_dataset,
    subsample,
)
from secagg.data.federated import FederatedDataset
from secagg.data.partition import PartitionConfig, heterogeneity, size_skew
from secagg.data.shift import FeatureShift
from secagg.errors import ConfigError
from secagg.models import build_model, model_names
from secagg.seeding import derive_seed
from secagg.validation import check_choice, check_int, check_real

DATASETS = NAMES


@dataclass(frozen=True)
class TaskConfig:
    """Dataset, client count, partition scheme and model of a federated task.

    ``dataset``: one of :data:`DATASETS` (``medmnist:<name>``, e.g. ``medmnist:pathmnist``). ``data``:
    the folder holding its files (``None`` for the bundled digits and breast-cancer, required for the
    others; its existence is checked when the task is built). ``test_fraction`` splits the bundled
    sets only. ``train_size`` and ``test_size`` (``None``: all) train and test on a seeded random
    subset of that many examples (small runs of the large data sets). The ``"natural"`` partition
    needs a data set with its own parties: femnist's writers (whole writers are kept, so it takes no
    ``train_size``: ``num_clients`` sets how many) or breast-cancer's sites (one per client, sites
    differing in case mix: :func:`secagg.data.breast_cancer.site_partition`).
    ``shift``: a :class:`~secagg.data.shift.FeatureShift` (each client sees its data through its own
    seeded acquisition: intensity, contrast, blur, rotation), applied after partitioning by
    :func:`build_task` and to a task factory's data by :func:`make_task`; ``None`` (the default): no
    shift, and ``to_dict`` leaves the key out, so older configurations read and compare unchanged.
    """

    dataset: str = "digits"
    num_clients: int = 20
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: str = "mlp"
    test_fraction: float = 0.2
    data: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    shift: FeatureShift | None = None

    def __post_init__(self) -> None:
        check_dataset(self.dataset)
        if self.shift is not None and not isinstance(self.shift, FeatureShift):
            raise ConfigError(f"shift: expected a FeatureShift or None, got {type(self.shift).__name__}")
        check_int("num_clients", self.num_clients, minimum=1)
        check_choice("model", self.model, model_names())
        check_real("test_fraction", self.test_fraction, gt=0.0, lt=1.0)
        if not isinstance(self.partition, PartitionConfig):
            raise ConfigError(f"partition: expected a PartitionConfig, got "
                              f"{type(self.partition).__name__}")
        if isinstance(self.data, os.PathLike):
            object.__setattr__(self, "data", os.fspath(self.data))
        if self.data is not None and (not isinstance(self.data, str) or not self.data):
            raise ConfigError(f"data: must be a folder path, got {self.data!r}")
        if is_bundled(self.dataset) and self.data is not None:
            raise ConfigError(f"data: {self.dataset} ships with scikit-learn and reads no files, got "
                              f"data={self.data!r}")
        if not is_bundled(self.dataset) and self.data is None:
            raise ConfigError(f"data: {self.dataset} loads from local files: give the folder holding "
                              f"{'; '.join(expected_files(self.dataset, '<data>'))}; nothing is downloaded")
        if self.partition.kind == "natural" and not has_natural_partition(self.dataset):
            raise ConfigError(f"partition.kind: 'natural' gives each client one writer, and "
                              f"{self.dataset} has no writers (femnist has) nor sites (breast-cancer has: "
                              f"one site per client)")
        for name in ("train_size", "test_size"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        if self.partition.kind == "natural" and has_writers(self.dataset) and self.train_size is not None:
            raise ConfigError("train_size: the natural partition keeps whole writers; num_clients sets "
                              "how many writers train")

    def to_dict(self) -> dict[str, Any]:
        out = to_plain(self)
        if out["shift"] is None:
            del out["shift"]
        return out

    @classmethod
    def from_dict(cls, data: Any) -> TaskConfig:
        if isinstance(data, dict) and isinstance(data.get("shift"), dict):
            data = {**data, "shift": FeatureShift.from_dict(data["shift"])}
        return from_plain(cls, data, "task")


@dataclass(frozen=True)
class Task:
    data: FederatedDataset
    model: nn.Module


TaskFactory = Callable[[TaskConfig, int], Task]
BUNDLED = "digits"
#: the built-in tasks ``--task`` can name, each with the ``(dataset, model)`` it implies: ``digits``
#: (the default) implies nothing (the built-in task on whatever ``--dataset`` and ``--model`` say);
#: ``breast-cancer`` sets ``dataset="breast-cancer"`` and, unless ``--model`` is given,
#: ``model="tabular"``.
TASKS: dict[str, tuple[str, str] | None] = {BUNDLED: None, "breast-cancer": ("breast-cancer", "tabular")}
#: built-in tasks that come with their own factory (their own model and evaluation), by name: ``gan``,
#: the federated GAN (:mod:`secagg.gan`)
FACTORY_TASKS: dict[str, str] = {"gan": "secagg.gan.task:build_gan_task"}


def task_defaults(spec: str) -> tuple[str, str] | None:
    """The ``(dataset, model)`` the built-in task ``spec`` implies (:data:`TASKS`); ``None`` for
    ``digits`` and for a user's ``"module:function"``."""
    return TASKS.get(spec)


def task_dataset(spec: str, dataset: str | None) -> str | None:
    """The data set a deployment's client run with ``--task spec`` and ``--dataset dataset`` requires
    of the server's run: ``dataset``, else the one the built-in task implies, else ``None`` (take the
    server's). :class:`ConfigError` naming ``--dataset`` when the two disagree."""
    implied = task_defaults(spec)
    if implied is None:
        return dataset
    if dataset is not None and dataset != implied[0]:
        raise ConfigError(f"--dataset: --task {spec} trains on {implied[0]}, got --dataset {dataset}; "
                          f"drop one of them")
    return implied[0]


def load_task_factory(spec: str) -> TaskFactory | None:
    """The task factory named ``spec`` (``"module:function"``, or a name in :data:`FACTORY_TASKS`:
    ``"gan"``), or ``None`` for a built-in task (:data:`TASKS`: ``"digits"``, ``"breast-cancer"``),
    which :func:`build_task` builds.
    :class:`ConfigError` naming ``--task`` when the module or function cannot be found."""
    if spec in TASKS:
        return None
    module_name, sep, attr = FACTORY_TASKS.get(spec, spec).partition(":")
    if not sep or not module_name or not attr:
        others = ", ".join(repr(t) for t in (*TASKS, *FACTORY_TASKS) if t != BUNDLED)
        raise ConfigError(f"--task: expected 'digits' or 'module:function' (or another built-in task: "
                          f"{others}), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--task: cannot import module {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"--task: {module_name!r} has no function {attr!r}")
    return factory  # type: ignore[no-any-return]


def make_task(config: TaskConfig, *, seed: int, factory: TaskFactory | None = None) -> Task:
    """:func:`build_task`, or ``factory(config, seed)`` checked: a :class:`Task` whose data has
    ``config.num_clients`` clients (:class:`ConfigError` naming ``--task`` otherwise), its data put
    through ``config.shift`` as :func:`build_task` does."""
    if factory is None:
        return build_task(config, seed=seed)
    task = factory(config, seed)
    if not isinstance(task, Task) or not isinstance(task.model, nn.Module) or \
            not isinstance(task.data, FederatedDataset):
        raise ConfigError(f"--task: the factory must return secagg.task.Task(data=FederatedDataset, "
                          f"model=torch.nn.Module), got {type(task).__name__}")
    if task.data.num_clients != config.num_clients:
        raise ConfigError(f"--task: the factory split the data into {task.data.num_clients} clients, the run "
                          f"has num_clients={config.num_clients}")
    if config.shift is not None:
        task = Task(config.shift.apply(task.data, seed), task.model)
    return task


def local_data_factory(factory: TaskFactory | None, *, dataset: str | None = None,
                       data: str | Path | None = None) -> TaskFactory:
    """The task factory of a deployment's client: the server's task, built on this machine's data.

    The server's configuration names the data set and the server's own path; that path is never read
    here: ``data`` (this machine's ``--data``) replaces it. ``dataset`` (``--dataset``), when given,
    must be the server's. Then ``factory`` (or :func:`build_task`) builds the task. Raises
    :class:`ConfigError` naming ``--dataset`` or ``--data``.
    """
    local = None if data is None else os.fspath(data)

    def build(config: TaskConfig, seed: int) -> Task:
        if dataset is not None and dataset != config.dataset:
            raise ConfigError(f"--dataset: this client names {dataset}, the server's run trains on "
                              f"{config.dataset}: every process of a deployment must load the same data")
        try:
            mine = dataclasses.replace(config, data=local)
        except ConfigError as exc:
            if is_bundled(config.dataset):
                raise ConfigError(f"--data: the server's run trains on {config.dataset}, which reads no "
                                  f"files; drop --data (got {local!r})") from exc
            raise ConfigError(f"--data: the server's run trains on {config.dataset}: give this machine's "
                              f"copy of its files with --data PATH (expected: "
                              f"{'; '.join(expected_files(config.dataset, 'PATH'))}); the server's path is "
                              f"never used") from exc
        return make_task(mine, seed=seed, factory=factory)

    return build


def heterogeneity_report(data: FederatedDataset, config: TaskConfig, seed: int) -> dict[str, Any]:
    """How non-IID a run's federation is, for its ``results.json`` (``"data"``): ``label_skew`` (mean
    total-variation distance of the clients' label mixes to the global one,
    :func:`~secagg.data.partition.label_skew`), ``sizes`` (:func:`~secagg.data.partition.size_skew`:
    min/median/max, max/min, Gini, the share of the largest 20% of clients) and ``shift`` (the feature
    shift's strengths and each client's acquisition, :meth:`~secagg.data.shift.FeatureShift.summary`;
    ``None`` without one). ``label_skew`` is ``None`` when the labels are not class indices (a task
    factory's regression targets, say)."""
    labels = data.train_y.numpy()
    report = (heterogeneity(data.partition, labels) if labels.ndim == 1 and labels.dtype.kind in "iu"
              else {"label_skew": None, "sizes": size_skew(data.partition)})
    report["shift"] = None if config.shift is None else config.shift.summary(data.num_clients, seed)
    return report


def build_task(config: TaskConfig, *, seed: int) -> Task:
    """Load the data (digits: split it; the others: their own test split), partition it, and build
    the initial model, all from ``seed``. :class:`DataError` names a missing or malformed file."""
    split = load_dataset(config.dataset, config.data, test_fraction=config.test_fraction,
                         seed=derive_seed(seed, "split") % 2**32)
    split = subsample(split, train_size=config.train_size, seed=derive_seed(seed, "subsample"))
    split, partition = federate(split, config.partition, config.num_clients,
                                seed=derive_seed(seed, "partition"))
    split = subsample(split, test_size=config.test_size, seed=derive_seed(seed, "subsample"))
    num_classes = split.num_classes
    data = FederatedDataset(split.train_x, split.train_y, split.test_x, split.test_y, partition,
                            num_classes)
    if config.shift is not None:  # each client's rows through its site's acquisition (seeded)
        data = config.shift.apply(data, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        model = build_model(config.model, data.input_shape, num_classes)
    return Task(data, model)
