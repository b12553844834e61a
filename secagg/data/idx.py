"""MNIST and Fashion-MNIST from torchvision's folders: the IDX files, parsed with numpy.

``<root>/MNIST/raw/`` (Fashion-MNIST: ``<root>/FashionMNIST/raw/``) must hold
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``, each plain or gzipped (``.gz``; the plain file is read when both are
there, as torchvision leaves both). The IDX format (LeCun et al.): a 4-byte magic number (two zero
bytes, the element type, 0x08 for unsigned bytes, and the number of dimensions: 0x00000803 for
images, 0x00000801 for labels), each dimension as a big-endian uint32, then the data, row-major.
Magic numbers, dimensions and lengths are checked: a wrong or truncated file is a :class:`DataError`
naming it and what is wrong. Images are (n, 28, 28), labels 0..9; the splits are the data set's own
(60,000 train, 10,000 test). Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from secagg.data.files import check_end, find_file, read_exactly
from secagg.errors import DataError

FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
UNSIGNED_BYTE = 0x08
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
SIDE, CLASSES = 28, 10

__all__ = ["FOLDERS", "idx_files", "load_idx_dataset", "read_idx"]


def read_idx(path: str | Path, *, ndim: int) -> np.ndarray:
    """The uint8 array of the IDX file ``path`` (gzipped if it ends in ``.gz``) of ``ndim`` dimensions.

    Raises :class:`DataError` naming the file for a wrong magic number, an element type other than
    unsigned byte, a wrong number of dimensions, a truncated file or trailing bytes.
    """
    path = Path(path)
    expected = (UNSIGNED_BYTE << 8) | ndim
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
            (magic,) = struct.unpack(">I", read_exactly(f, 4, path, "IDX magic number"))
            if magic >> 16 != 0:
                raise DataError(f"{path}: not an IDX file: magic number 0x{magic:08x} does not start with "
                                f"two zero bytes (expected 0x{expected:08x})")
            if (magic >> 8) & 0xFF != UNSIGNED_BYTE:
                raise DataError(f"{path}: IDX element type 0x{(magic >> 8) & 0xFF:02x} is not 0x08 "
                                f"(unsigned byte); expected magic number 0x{expected:08x}")
            if magic & 0xFF != ndim:
                raise DataError(f"{path}: IDX file of {magic & 0xFF} dimensions (magic number "
                                f"0x{magic:08x}); expected {ndim} (0x{expected:08x})")
            dims = struct.unpack(f">{ndim}I", read_exactly(f, 4 * ndim, path, "IDX dimensions"))
            count = math.prod(dims)
            data = read_exactly(f, count, path, f"data for dimensions {dims}")
            check_end(f, path, f"the {count} bytes of data for dimensions {dims}")
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({exc})") from exc
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def idx_files(root: str | Path, name: str) -> dict[str, tuple[Path, Path]]:
    """Where ``name``'s four files are looked for: split file -> (plain path, gzipped path)."""
    raw = Path(root) / FOLDERS[name] / "raw"
    stems = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
    return {key: (raw / stem, raw / f"{stem}.gz") for key, stem in stems.items()}


def _split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[1:] != (SIDE, SIDE):
        raise DataError(f"{images_path}: expected {SIDE}x{SIDE} images, got "
                        f"{images.shape[1]}x{images.shape[2]}")
    if images.shape[0] == 0:
        raise DataError(f"{images_path}: holds no images")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{labels_path}: holds {labels.shape[0]} labels but {images_path.name} holds "
                        f"{images.shape[0]} images")
    if int(labels.max()) >= CLASSES:
        raise DataError(f"{labels_path}: label {int(labels.max())} is outside 0..{CLASSES - 1}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, SIDE, SIDE)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_idx_dataset(root: str | Path, name: str = "mnist"
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MNIST (``name="mnist"``) or Fashion-MNIST (``"fashion-mnist"``) under torchvision's ``root``.

    Returns ``(train_x, train_y, test_x, test_y)``: ``x`` float32 (n, 1, 28, 28) in [0, 1], ``y``
    int64 (n,) in 0..9. :class:`DataError` names a missing or malformed file.
    """
    if name not in FOLDERS:
        raise DataError(f"name: must be one of {', '.join(map(repr, FOLDERS))}, got {name!r}")
    files = {key: find_file(name, *paths) for key, paths in idx_files(root, name).items()}
    train_x, train_y = _split(files["train_images"], files["train_labels"])
    test_x, test_y = _split(files["test_images"], files["test_labels"])
    return train_x, train_y, test_x, test_y
