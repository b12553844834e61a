"""CIFAR-10 from its standard local files: the binary version, or torchvision's pickled batches.

* **Binary** (preferred; read when its folder exists): ``<root>/cifar-10-batches-bin/`` holding
  ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``, each a sequence of 3,073-byte
  records: one label byte (0..9), then the 32x32 image as 1,024 red, 1,024 green and 1,024 blue bytes,
  row-major. Parsed with numpy; nothing is executed.
* **Pickled** (torchvision's folder): ``<root>/cifar-10-batches-py/`` holding ``data_batch_1`` ..
  ``data_batch_5`` and ``test_batch``, each a pickled dict with ``data`` (uint8 (10000, 3072), the
  same pixel order) and ``labels`` (10,000 ints).

**Never unpickle what crosses a trust boundary.** A pickle is a program: ``pickle.load`` on a
downloaded file runs whatever callable the file names (``os.system`` included). The pickled batches
are therefore read by :class:`RestrictedUnpickler`, whose ``find_class`` resolves only the exact
numpy globals that rebuild a plain array (``numpy.core.multiarray._reconstruct`` /
``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``, and protocol 5's
``numpy._core.numeric._frombuffer``), plus ``_codecs.encode`` narrowed to latin-1 (how a Python 3
protocol-2 pickle spells bytes). Every other global is refused with :class:`DataError` before
anything is called, and the result must be a dict of a uint8 array and integer labels. Prefer the
binary files all the same.

The splits are the data set's own: 50,000 train, 10,000 test. Nothing is downloaded.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secagg.data.files import find_file
from secagg.errors import DataError

BIN_FOLDER, PY_FOLDER = "cifar-10-batches-bin", "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
RECORD = 1 + 3 * 32 * 32
CLASSES = 10

__all__ = ["RestrictedUnpickler", "load_cifar10", "read_binary_batch", "read_pickled_batch"]


class _Refused(pickle.UnpicklingError):
    """A global (or a use of one) the restricted unpickler does not admit."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: latin-1 text only, nothing else."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise _Refused(f"_codecs.encode is admitted only for latin-1 text, got {encoding!r}")
    return text.encode("latin-1")


# numpy's own array rebuilders, taken from what numpy's pickling names (numpy 1.x and 2.x alike)
_RECONSTRUCT = np.zeros(1).__reduce_ex__(2)[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]

# (module, name) -> the object it resolves to; nothing is imported on the pickle's say-so
_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain containers and refuses every other global
    (``os.system``, ``builtins.eval``, any other numpy function...) before it could be called."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"refused the global {module}.{name}: only the numpy array constructors "
                           f"are admitted") from None


def _field(batch: dict[Any, Any], key: str) -> Any:
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    return None


def read_pickled_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (n, 3, 32, 32), labels int64 (n,))`` of one pickled CIFAR-10 batch, read with
    :class:`RestrictedUnpickler`. :class:`DataError` naming ``path`` for a refused global, a corrupt
    pickle or a dict without a uint8 (n, 3072) ``data`` and n labels in 0..9."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        batch = RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as exc:
        raise DataError(f"{path}: not a CIFAR-10 batch: {exc}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    except Exception as exc:  # a corrupt pickle fails in many ways (UnpicklingError, EOF, ValueError...)
        raise DataError(f"{path}: not a CIFAR-10 batch: corrupt or truncated pickle "
                        f"({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch: expected a pickled dict, got {type(batch).__name__}")
    data, labels = _field(batch, "data"), _field(batch, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != RECORD - 1:
        got = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__)
        raise DataError(f"{path}: 'data' must be a uint8 array (n, {RECORD - 1}), got {got}")
    try:
        y = np.asarray(labels)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: 'labels' must be a list of integers ({exc})") from None
    if y.ndim != 1 or y.dtype.kind not in "iu" or y.shape[0] != data.shape[0]:
        raise DataError(f"{path}: 'labels' must be {data.shape[0]} integers (one per image), got "
                        f"{y.dtype} {y.shape}")
    return data.reshape(-1, 3, 32, 32), _labels(path, y)


def _labels(path: Path, y: np.ndarray) -> np.ndarray:
    if y.size == 0:
        raise DataError(f"{path}: holds no images")
    if int(y.min()) < 0 or int(y.max()) >= CLASSES:
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise DataError(f"{path}: label {bad} is outside 0..{CLASSES - 1}")
    return y.astype(np.int64)


def read_binary_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (n, 3, 32, 32), labels int64 (n,))`` of one binary CIFAR-10 batch (3,073-byte
    records). :class:`DataError` naming ``path`` for a length that is not a whole number of records."""
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if raw.size == 0 or raw.size % RECORD:
        raise DataError(f"{path}: truncated or not a CIFAR-10 binary batch: {raw.size} bytes is not a "
                        f"whole number of {RECORD}-byte records (1 label byte + 3072 pixel bytes)")
    records = raw.reshape(-1, RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), _labels(path, records[:, 0])


def _join(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    return torch.from_numpy(x), torch.from_numpy(np.concatenate([p[1] for p in parts]))


def load_cifar10(root: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CIFAR-10 under ``root``: the binary batches if ``root/cifar-10-batches-bin`` exists, else the
    pickled ones in ``root/cifar-10-batches-py`` (see the module docstring).

    Returns ``(train_x, train_y, test_x, test_y)``: ``x`` float32 (n, 3, 32, 32) in [0, 1], ``y``
    int64 (n,) in 0..9. :class:`DataError` names a missing or malformed file.
    """
    root = Path(root)
    if (root / BIN_FOLDER).is_dir():
        folder, suffix, read = root / BIN_FOLDER, ".bin", read_binary_batch
    elif (root / PY_FOLDER).is_dir():
        folder, suffix, read = root / PY_FOLDER, "", read_pickled_batch
    else:
        raise DataError(f"cifar10: expected the folder {root / BIN_FOLDER} (binary version, preferred) or "
                        f"{root / PY_FOLDER} (torchvision's); neither exists. Nothing is downloaded: put "
                        f"the data set's files there (or point data/--data at the folder that holds them)")
    train = [read(find_file("cifar10", folder / f"{name}{suffix}")) for name in TRAIN_BATCHES]
    test = [read(find_file("cifar10", folder / f"{TEST_BATCH}{suffix}"))]
    return (*_join(train), *_join(test))
