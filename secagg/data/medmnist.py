"""MedMNIST from its ``.npz`` files (Yang et al., "MedMNIST v2", Scientific Data 2023).

``<root>/<name>.npz`` (``pathmnist.npz``, ``organamnist.npz``, ``bloodmnist.npz``...; the larger
MedMNIST+ sizes as ``pathmnist_64.npz``...) holds ``train_images``, ``train_labels``, ``val_images``,
``val_labels``, ``test_images`` and ``test_labels``: images uint8 (n, h, w) for grey sets or
(n, h, w, 3) for colour ones, labels (n, 1). Read with ``np.load(allow_pickle=False)``: an object
array is refused, nothing in the file is executed. The federated training set is ``train``, the test
set is ``test`` (the data set's own split); ``val`` is not used. Multi-label sets (``chestmnist``,
labels (n, 14)) are refused: a run classifies into one label per image. Nothing is downloaded.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from secagg.data.files import find_file
from secagg.errors import ConfigError, DataError

NAME = re.compile(r"[a-z0-9]+(_[0-9]+)?")
MULTI_LABEL = ("chestmnist",)

__all__ = ["MULTI_LABEL", "check_name", "load_medmnist", "medmnist_file"]


def check_name(name: str) -> str:
    """``name`` if it names a single-label MedMNIST set file-safely (``pathmnist``, ``pathmnist_64``);
    :class:`ConfigError` otherwise (multi-label sets included)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"dataset: medmnist:<name> needs a MedMNIST file name such as pathmnist, "
                          f"organamnist, bloodmnist or pathmnist_64 (lower case letters and digits), "
                          f"got {name!r}")
    if name.split("_")[0] in MULTI_LABEL:
        raise ConfigError(f"dataset: medmnist:{name} is multi-label (several labels per image); only "
                          f"single-label MedMNIST sets are supported")
    return name


def medmnist_file(root: str | Path, name: str) -> Path:
    """Where ``name``'s file is expected: ``root/<name>.npz``."""
    return Path(root) / f"{check_name(name)}.npz"


def _images(path: Path, key: str, images: np.ndarray) -> torch.Tensor:
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (
            images.ndim == 4 and images.shape[3] not in (1, 3)):
        raise DataError(f"{path}: '{key}' must be uint8 (n, h, w) or (n, h, w, 3), got "
                        f"{images.dtype} {images.shape}")
    if images.shape[0] == 0:
        raise DataError(f"{path}: '{key}' holds no images")
    x = images[..., None] if images.ndim == 3 else images
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32) / 255.0)


def _labels(path: Path, key: str, labels: np.ndarray, n: int, name: str) -> torch.Tensor:
    if labels.ndim == 2 and labels.shape[0] == n and labels.shape[1] > 1:
        raise DataError(f"{path}: '{key}' is multi-label {labels.shape} ({name} gives each image several "
                        f"labels); only single-label MedMNIST sets are supported")
    if labels.dtype.kind not in "iu" or labels.shape not in ((n, 1), (n,)):
        raise DataError(f"{path}: '{key}' must be {n} integer labels of shape ({n}, 1), got "
                        f"{labels.dtype} {labels.shape}")
    y = labels.reshape(-1).astype(np.int64)
    if int(y.min()) < 0:
        raise DataError(f"{path}: '{key}' has the negative label {int(y.min())}")
    return torch.from_numpy(y)


def load_medmnist(root: str | Path, name: str
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MedMNIST set ``name`` from ``root/<name>.npz``: ``(train_x, train_y, test_x, test_y)``, ``x``
    float32 (n, c, h, w) in [0, 1] (c = 1 or 3), ``y`` int64 (n,). :class:`DataError` names a
    missing or malformed file."""
    path = find_file(f"medmnist:{name}", medmnist_file(root, name))
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: not a MedMNIST file: expected an .npz archive of arrays, got a single "
                            f"array")
        with npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(f"{path}: missing the array(s) {', '.join(missing)} (a MedMNIST file holds "
                                f"train_/val_/test_ images and labels)")
            arrays = {k: npz[k] for k in keys}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # ValueError: pickled arrays too
        raise DataError(f"{path}: not a readable MedMNIST .npz ({exc})") from exc
    out = []
    for split in ("train", "test"):
        x = _images(path, f"{split}_images", arrays[f"{split}_images"])
        out += [x, _labels(path, f"{split}_labels", arrays[f"{split}_labels"], x.shape[0], name)]
    if out[0].shape[1:] != out[2].shape[1:]:
        raise DataError(f"{path}: train images {tuple(out[0].shape[1:])} and test images "
                        f"{tuple(out[2].shape[1:])} differ in shape")
    return out[0], out[1], out[2], out[3]
