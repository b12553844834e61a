"""LEAF's FEMNIST from its JSON files (Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018).

``<root>/train/*.json`` and ``<root>/test/*.json``, as LEAF's ``preprocess.sh`` writes them (for
instance ``./preprocess.sh -s niid --sf 0.05 -k 0 -t sample``), each::

    {"users": ["f0000_14", ...], "num_samples": [n, ...],
     "user_data": {"f0000_14": {"x": [[784 floats in [0, 1]], ...], "y": [label, ...]}, ...}}

Images are 28x28 grey (values as LEAF stores them), labels 0..61 (10 digits, 26 upper and 26 lower
case letters). Every field is checked (counts, row lengths, value and label ranges, a writer in two
files of a split) and a bad file is a :class:`DataError` naming it. JSON is data, never code.

Each writer is a natural client: :func:`secagg.data.partition.natural_partition` (partition kind
``"natural"``) gives each client one writer's examples. The test set is LEAF's test split. Nothing is
downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secagg.errors import DataError

PIXELS, SIDE, CLASSES = 784, 28, 62

__all__ = ["CLASSES", "WriterSplit", "load_femnist", "read_leaf_file"]


@dataclass(frozen=True)
class WriterSplit:
    """Train and test examples with their writers: ``train_writers[i]`` is the index in ``writers``
    (sorted writer ids, train and test together) of the writer of train example ``i``."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    train_writers: np.ndarray
    test_writers: np.ndarray
    writers: tuple[str, ...]


def _user(path: Path, user: str, entry: Any, count: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
        raise DataError(f"{path}: user_data[{user!r}] must be an object with 'x' and 'y'")
    try:
        x = (np.zeros((0, PIXELS), np.float32) if entry["x"] == []
             else np.asarray(entry["x"], dtype=np.float32))
        y = np.asarray(entry["y"])
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: user {user!r}: 'x' must be rows of {PIXELS} numbers ({exc})") from None
    n = len(entry["y"]) if isinstance(entry["y"], list) else -1
    if x.ndim != 2 or x.shape[1] != PIXELS:
        raise DataError(f"{path}: user {user!r}: 'x' must be rows of {PIXELS} numbers (28x28), got shape "
                        f"{x.shape}")
    if y.ndim != 1 or n != x.shape[0] or (y.size and y.dtype.kind not in "iu"):
        raise DataError(f"{path}: user {user!r}: 'y' must be {x.shape[0]} integer labels (one per row of "
                        f"'x'), got {n if n >= 0 else type(entry['y']).__name__}")
    if count is not None and count != x.shape[0]:
        raise DataError(f"{path}: user {user!r}: num_samples says {count}, 'x' holds {x.shape[0]} rows")
    if x.size and not (np.isfinite(x).all() and float(x.min()) >= 0.0 and float(x.max()) <= 1.0):
        raise DataError(f"{path}: user {user!r}: pixel values must be in [0, 1]")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= CLASSES):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise DataError(f"{path}: user {user!r}: label {bad} is outside 0..{CLASSES - 1}")
    return x.reshape(-1, 1, SIDE, SIDE), y.astype(np.int64)


def read_leaf_file(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One LEAF FEMNIST JSON file: writer id -> ``(x float32 (n, 1, 28, 28), y int64 (n,))``, in the
    file's ``users`` order. :class:`DataError` naming ``path`` for anything malformed."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a LEAF JSON file: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("users"), list) \
            or not isinstance(doc.get("user_data"), dict):
        raise DataError(f"{path}: not a LEAF JSON file: expected an object with 'users' (a list) and "
                        f"'user_data' (an object)")
    users, data = doc["users"], doc["user_data"]
    counts = doc.get("num_samples")
    if counts is not None and (not isinstance(counts, list) or len(counts) != len(users)):
        raise DataError(f"{path}: 'num_samples' must list one count per user ({len(users)})")
    if len(set(map(str, users))) != len(users) or not all(isinstance(u, str) for u in users):
        raise DataError(f"{path}: 'users' must be distinct strings")
    out = {}
    for i, user in enumerate(users):
        if user not in data:
            raise DataError(f"{path}: user {user!r} is in 'users' but not in 'user_data'")
        out[user] = _user(path, user, data[user], None if counts is None else counts[i])
    return out


def _read_split(root: Path, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / split
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise DataError(f"femnist: expected LEAF's JSON files in {folder / '*.json'}; none found. Nothing is "
                        f"downloaded: put the data set's files there (or point data/--data at the folder "
                        f"that holds train/ and test/)")
    users: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    seen: dict[str, Path] = {}
    for path in files:
        for user, xy in read_leaf_file(path).items():
            if user in users:
                raise DataError(f"{path}: writer {user!r} is also in {seen[user]}: a writer belongs to "
                                f"one file of a split")
            users[user], seen[user] = xy, path
    if not any(len(y) for _, y in users.values()):
        raise DataError(f"femnist: the files in {folder} hold no examples")
    return users


def _stack(users: dict[str, tuple[np.ndarray, np.ndarray]], index: dict[str, int]
           ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    names = sorted(users)
    x = np.concatenate([users[u][0] for u in names])
    y = np.concatenate([users[u][1] for u in names])
    writers = np.concatenate([np.full(len(users[u][1]), index[u], dtype=np.int64) for u in names])
    return torch.from_numpy(x), torch.from_numpy(y), writers


def load_femnist(root: str | Path) -> WriterSplit:
    """FEMNIST under ``root`` (``train/*.json``, ``test/*.json``): ``x`` float32 (n, 1, 28, 28) in
    [0, 1], ``y`` int64 in 0..61, with each example's writer. Examples come grouped by writer, writers
    in sorted order. :class:`DataError` names a missing or malformed file."""
    root = Path(root)
    train, test = _read_split(root, "train"), _read_split(root, "test")
    writers = tuple(sorted(set(train) | set(test)))
    index = {w: i for i, w in enumerate(writers)}
    train_x, train_y, train_w = _stack(train, index)
    test_x, test_y, test_w = _stack(test, index)
    return WriterSplit(train_x, train_y, test_x, test_y, train_w, test_w, writers)
