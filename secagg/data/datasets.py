"""The data sets a task can name, and where each one's files are expected.

=================== ========================== ===============================================
name                files under ``data``       loader
=================== ========================== ===============================================
``digits``          none (ships with sklearn)  :func:`secagg.data.digits.load_digits_split`
``breast-cancer``   none (ships with sklearn)  :func:`secagg.data.breast_cancer.load_breast_cancer_split`
``mnist``           ``MNIST/raw/*-ubyte[.gz]`` :func:`secagg.data.idx.load_idx_dataset`
``fashion-mnist``   ``FashionMNIST/raw/...``   :func:`secagg.data.idx.load_idx_dataset`
``cifar10``         ``cifar-10-batches-bin/``  :func:`secagg.data.cifar.load_cifar10`
                    or ``cifar-10-batches-py/``
``femnist``         ``train/*.json``,          :func:`secagg.data.femnist.load_femnist`
                    ``test/*.json`` (LEAF)
``medmnist:<name>`` ``<name>.npz``             :func:`secagg.data.medmnist.load_medmnist`
=================== ========================== ===============================================

Every image loader gives float32 images (n, c, h, w) in [0, 1] and int64 labels; ``breast-cancer`` is a
table: float32 rows (n, 30), standardized with the training split's statistics (see
:mod:`secagg.data.breast_cancer`). The test set is the data set's own test split; only the bundled
sets (:data:`BUNDLED_SETS`), which have none, are split here (stratified, ``test_fraction``, seeded).
The ``"natural"`` partition is the data set's own division into parties: ``femnist``'s writers, and
``breast-cancer``'s simulated sites (:func:`secagg.data.breast_cancer.site_partition`, sites that
differ in case mix); the others refuse it. Nothing is ever downloaded: a missing file is a
:class:`DataError` naming the file expected and where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from secagg.data import breast_cancer, cifar, femnist, idx, medmnist
from secagg.data.digits import load_digits_split
from secagg.data.partition import Partition, PartitionConfig
from secagg.errors import ConfigError, DataError
from secagg.seeding import numpy_rng

BUNDLED = "digits"
#: the data sets that ship with scikit-learn and read no files (``data`` must be ``None``)
BUNDLED_SETS = ("digits", "breast-cancer")
NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "femnist", "medmnist:<name>", "breast-cancer")
WRITER_DATASETS = ("femnist",)
#: the data sets whose ``"natural"`` partition splits them into simulated sites (see :func:`federate`)
SITE_DATASETS = ("breast-cancer",)
#: the data sets whose inputs are table rows (n, features), not images: image-only steps (pixel
#: triggers, CNNs, image reconstruction) refuse them
TABULAR_SETS = ("breast-cancer",)
CLASSES = {"digits": 10, "breast-cancer": breast_cancer.CLASSES, "mnist": 10, "fashion-mnist": 10,
           "cifar10": 10, "femnist": femnist.CLASSES}

__all__ = ["BUNDLED_SETS", "NAMES", "DataSplit", "check_dataset", "check_files", "expected_files", "federate",
           "has_natural_partition", "has_writers", "is_bundled", "is_tabular", "load_dataset",
           "missing_files", "subsample"]


@dataclass(frozen=True)
class DataSplit:
    """A data set's train and test examples (``x`` float32 (n, c, h, w) in [0, 1], or (n, features) for a
    table; ``y`` int64 in ``0 .. num_classes - 1``) and, for data sets with writers, each example's
    writer index; for data sets split into sites (:data:`SITE_DATASETS`), ``train_site_key``: each
    training example's score the site split sorts by (breast-cancer: the mean radius, mm)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    train_writers: np.ndarray | None = None
    test_writers: np.ndarray | None = None
    train_site_key: np.ndarray | None = None

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(train_x, train_y, test_x, test_y)``, as :func:`load_digits_split` returns them."""
        return self.train_x, self.train_y, self.test_x, self.test_y


def check_dataset(name: str) -> str:
    """``name`` if a task can name it (see :data:`NAMES`); :class:`ConfigError` naming ``dataset``."""
    if isinstance(name, str) and name.startswith("medmnist:"):
        medmnist.check_name(name.removeprefix("medmnist:"))
        return name
    if name not in CLASSES:
        raise ConfigError(f"dataset: must be one of {', '.join(NAMES)} (e.g. medmnist:pathmnist), "
                          f"got {name!r}")
    return name


def has_writers(name: str) -> bool:
    """Whether the data set records who wrote each example (so the ``"natural"`` partition applies)."""
    return name in WRITER_DATASETS


def has_natural_partition(name: str) -> bool:
    """Whether the ``"natural"`` partition applies: femnist (one writer per client) or breast-cancer
    (one simulated site per client)."""
    return name in WRITER_DATASETS or name in SITE_DATASETS


def is_tabular(name: str) -> bool:
    """Whether data set ``name``'s inputs are table rows (n, features) rather than images."""
    return name in TABULAR_SETS


def is_bundled(name: str) -> bool:
    """Whether data set ``name`` ships with scikit-learn (reads no files: ``data`` must be ``None``)."""
    return name in BUNDLED_SETS


def expected_files(name: str, data: str | Path) -> list[str]:
    """What data set ``name`` reads under ``data``, in words (for messages and ``--help``)."""
    root = Path(data)
    check_dataset(name)
    if name in idx.FOLDERS:
        return [f"{plain} (or {gz.name})" for plain, gz in idx.idx_files(root, name).values()]
    if name == "cifar10":
        names = [*cifar.TRAIN_BATCHES, cifar.TEST_BATCH]
        return [f"{root / cifar.BIN_FOLDER}/{{{','.join(names)}}}.bin (binary version, preferred) or "
                f"{root / cifar.PY_FOLDER}/{{{','.join(names)}}} (torchvision's pickled batches)"]
    if name == "femnist":
        return [str(root / "train" / "*.json"), str(root / "test" / "*.json")]
    if name.startswith("medmnist:"):
        return [str(medmnist.medmnist_file(root, name.removeprefix("medmnist:")))]
    return []


def missing_files(name: str, data: str | Path) -> list[str]:
    """The files data set ``name`` needs under ``data`` that are not there (checked by name only)."""
    root = Path(data)
    check_dataset(name)
    if name in idx.FOLDERS:
        return [f"{plain} (or {gz.name})" for plain, gz in idx.idx_files(root, name).values()
                if not plain.is_file() and not gz.is_file()]
    if name == "cifar10":
        names = [*cifar.TRAIN_BATCHES, cifar.TEST_BATCH]
        if (root / cifar.BIN_FOLDER).is_dir():
            return [str(p) for n in names if not (p := root / cifar.BIN_FOLDER / f"{n}.bin").is_file()]
        if (root / cifar.PY_FOLDER).is_dir():
            return [str(p) for n in names if not (p := root / cifar.PY_FOLDER / n).is_file()]
        return expected_files(name, root)
    if name == "femnist":
        return [str(root / split / "*.json") for split in ("train", "test")
                if not any((root / split).glob("*.json"))]
    if name.startswith("medmnist:"):
        path = medmnist.medmnist_file(root, name.removeprefix("medmnist:"))
        return [] if path.is_file() else [str(path)]
    return []


def check_files(name: str, data: str | Path) -> None:
    """:class:`DataError` listing every file data set ``name`` needs under ``data`` that is missing
    (their contents are checked when they are loaded)."""
    missing = missing_files(name, data)
    if missing:
        raise DataError(f"{name}: {data} does not hold the data set's files; missing: {'; '.join(missing)}. "
                        f"Nothing is downloaded: put the files there in their standard layout")


def load_dataset(name: str, data: str | Path | None = None, *, test_fraction: float = 0.2,
                 seed: int = 0) -> DataSplit:
    """Data set ``name`` from the folder ``data`` (``None`` for digits and breast-cancer).
    ``test_fraction`` and ``seed`` split the bundled sets only; the others come with their own test
    split. :class:`ConfigError` for an unknown name or a missing/superfluous ``data``,
    :class:`DataError` naming a missing or malformed file."""
    check_dataset(name)
    if is_bundled(name) and data is not None:
        raise ConfigError(f"data: {name} ships with scikit-learn and reads no files, got data={data!r}")
    if name == BUNDLED:
        return DataSplit(*load_digits_split(test_fraction, seed=seed), num_classes=CLASSES[name])
    if name == "breast-cancer":
        *tensors, radius = breast_cancer.load_breast_cancer_split(test_fraction, seed=seed)
        return DataSplit(*tensors, num_classes=CLASSES[name], train_site_key=radius)
    if data is None:
        raise ConfigError(f"data: {name} loads from local files: give the folder holding "
                          f"{'; '.join(expected_files(name, '<data>'))}; nothing is downloaded")
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"{name}: the data folder {root} does not exist; expected there: "
                        f"{'; '.join(expected_files(name, root))}. Nothing is downloaded")
    check_files(name, root)
    if name in idx.FOLDERS:
        return DataSplit(*idx.load_idx_dataset(root, name), num_classes=CLASSES[name])
    if name == "cifar10":
        return DataSplit(*cifar.load_cifar10(root), num_classes=CLASSES[name])
    if name == "femnist":
        w = femnist.load_femnist(root)
        return DataSplit(w.train_x, w.train_y, w.test_x, w.test_y, CLASSES[name], w.train_writers,
                         w.test_writers)
    tensors = medmnist.load_medmnist(root, name.removeprefix("medmnist:"))
    classes = int(torch.cat([tensors[1], tensors[3]]).max()) + 1
    return DataSplit(*tensors, num_classes=classes)


def subsample(split: DataSplit, *, train_size: int | None = None, test_size: int | None = None,
              seed: int) -> DataSplit:
    """``split`` cut to a seeded uniform random subset of ``train_size`` train and ``test_size`` test
    examples (``None``: all), in their original order. :class:`DataError` if fewer are there."""
    def pick(n: int, size: int | None, which: str) -> torch.Tensor | None:
        if size is None or size == n:
            return None
        if size > n:
            raise DataError(f"{which}_size: asked for {size} {which} examples, the data set has {n}")
        chosen = numpy_rng(seed, "subsample", which).choice(n, size=size, replace=False)
        return torch.from_numpy(np.sort(chosen).astype(np.int64))

    train = pick(int(split.train_y.shape[0]), train_size, "train")
    test = pick(int(split.test_y.shape[0]), test_size, "test")
    if train is None and test is None:
        return split

    def rows(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        return x if idx is None else x[idx]

    def writers(w: np.ndarray | None, idx: torch.Tensor | None) -> np.ndarray | None:
        return w if w is None or idx is None else w[idx.numpy()]

    return DataSplit(rows(split.train_x, train), rows(split.train_y, train), rows(split.test_x, test),
                     rows(split.test_y, test), split.num_classes, writers(split.train_writers, train),
                     writers(split.test_writers, test), writers(split.train_site_key, train))


def federate(split: DataSplit, partition: PartitionConfig, num_clients: int, *, seed: int
             ) -> tuple[DataSplit, Partition]:
    """``split`` partitioned across ``num_clients`` clients by ``partition`` (seeded).

    With the ``"natural"`` partition, a data set split into sites (``train_site_key`` set:
    breast-cancer) gets :func:`secagg.data.breast_cancer.site_partition` (one site per client, every
    example kept, the test set unchanged). Otherwise only the chosen writers' examples are kept (the
    partition is re-indexed to them), and the test set is the chosen writers' test examples, or every
    test example when none of them has any (LEAF's split by user, whose test writers are others).
    """
    if partition.kind == "natural" and split.train_site_key is not None:
        return split, breast_cancer.site_partition(split.train_site_key, num_clients, seed=seed)
    parts = partition.split(split.train_y.numpy(), num_clients, seed=seed, writers=split.train_writers)
    if partition.kind != "natural":
        return split, parts
    assert split.train_writers is not None and split.test_writers is not None
    rows = np.sort(np.concatenate(parts))
    parts = tuple(np.searchsorted(rows, p).astype(np.int64) for p in parts)
    keep = torch.from_numpy(rows)
    test = np.isin(split.test_writers, np.unique(split.train_writers[rows]))
    if not test.any():
        test = np.ones_like(test)
    test_rows = torch.from_numpy(np.flatnonzero(test))
    return DataSplit(split.train_x[keep], split.train_y[keep], split.test_x[test_rows],
                     split.test_y[test_rows], split.num_classes, split.train_writers[rows],
                     split.test_writers[test]), parts
