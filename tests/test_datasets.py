"""Real data sets from local files: each loader on small files written here in exactly the standard
format (IDX, CIFAR-10 binary records and pickled batches, LEAF JSON, MedMNIST npz), their errors, the
natural FEMNIST partition, and the wiring through TaskConfig, the CLI, the client and the bench."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from secagg.data.cifar import RECORD, load_cifar10, read_pickled_batch
from secagg.data.datasets import check_files, load_dataset
from secagg.data.femnist import load_femnist
from secagg.data.idx import load_idx_dataset, read_idx
from secagg.data.medmnist import load_medmnist
from secagg.data.partition import PartitionConfig
from secagg.errors import ConfigError, DataError
from secagg.models import build_model
from secagg.seeding import numpy_rng
from secagg.task import TaskConfig, build_task, local_data_factory

RNG = numpy_rng(0, "test-datasets")


def _bytes(*shape: int, high: int = 256) -> np.ndarray:
    return RNG.integers(0, high, size=shape).astype(np.uint8)


# -- MNIST / Fashion-MNIST: IDX ---------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, folder: str = "MNIST", *, n_train: int = 12, n_test: int = 6,
                gz: bool = False) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": _bytes(n_train, 28, 28),
              "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
              "t10k-images-idx3-ubyte": _bytes(n_test, 28, 28),
              "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10}
    for name, array in arrays.items():
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (raw / name).write_bytes(idx_bytes(array))
    return arrays


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_loads_torchvisions_folders_exactly(tmp_path, name, folder, gz):
    arrays = write_mnist(tmp_path, folder, gz=gz)
    train_x, train_y, test_x, test_y = load_idx_dataset(tmp_path, name)
    assert train_x.shape == (12, 1, 28, 28) and test_x.shape == (6, 1, 28, 28)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
    assert torch.equal(train_x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"] / 255.0).float())
    assert torch.equal(test_y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)))
    assert float(train_x.min()) >= 0.0 and float(train_x.max()) <= 1.0


def test_the_plain_idx_file_wins_over_its_gz(tmp_path):
    plain = write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(12, np.uint8))))
    assert torch.equal(load_idx_dataset(tmp_path)[1],
                       torch.from_numpy(plain["train-labels-idx1-ubyte"].astype(np.int64)))


@pytest.mark.parametrize("content, message", [
    (bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + bytes(5), "IDX file of 1 dimensions .* expected 3"),
    (bytes([1, 0, 8, 3]) + bytes(12), "not an IDX file: magic number 0x01000803"),
    (bytes([0, 0, 0x0D, 3]) + bytes(12), "element type 0x0d is not 0x08"),
    (bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 28, 28) + bytes(1000), "truncated: expected 1568 bytes"),
    (bytes([0, 0, 8, 3]) + struct.pack(">2I", 2, 28), "truncated: expected 12 bytes of IDX dimensions"),
    (bytes([0, 0]), "truncated: expected 4 bytes of IDX magic"),
    (bytes([0, 0, 8, 3]) + struct.pack(">3I", 1, 28, 28) + bytes(785), "trailing bytes"),
    (bytes([0, 0, 8, 3]) + struct.pack(">3I", 1, 27, 28) + bytes(756), "expected 28x28 images, got 27x28"),
])
def test_a_wrong_or_truncated_idx_file_names_itself(tmp_path, content, message):
    write_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=f"{bad}: .*{message}"):
        load_idx_dataset(tmp_path)


def test_idx_labels_must_match_the_images(tmp_path):
    write_mnist(tmp_path)
    labels = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(DataError, match=f"{labels}: holds 5 labels but t10k-images-idx3-ubyte holds 6"):
        load_idx_dataset(tmp_path)
    labels.write_bytes(idx_bytes(np.full(6, 10, np.uint8)))
    with pytest.raises(DataError, match=r"label 10 is outside 0..9"):
        load_idx_dataset(tmp_path)


def test_a_truncated_or_corrupt_gz_names_itself(tmp_path):
    write_mnist(tmp_path, gz=True)
    gz = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    whole = gz.read_bytes()
    gz.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=f"{gz}"):
        load_idx_dataset(tmp_path)
    gz.write_bytes(b"\x1f\x8b" + bytes(40))
    with pytest.raises(DataError, match=f"{gz}: cannot read"):
        read_idx(gz, ndim=3)


def test_a_missing_file_says_where_it_is_expected_and_that_nothing_is_downloaded(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").unlink()
    expected = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    with pytest.raises(DataError, match=f"expected the file {expected} or {expected}.gz.*Nothing is "
                                        f"downloaded"):
        load_idx_dataset(tmp_path)
    with pytest.raises(DataError, match=f"missing: {expected} \\(or t10k-images-idx3-ubyte.gz\\)"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DataError, match=r"fashion-mnist: the data folder .*nope does not exist"):
        load_dataset("fashion-mnist", tmp_path / "nope")


# -- CIFAR-10 -----------------------------------------------------------------------------------------

def cifar_batches(n: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {name: (_bytes(n, 3072), (np.arange(n) + i) % 10) for i, name in enumerate(names)}


def write_cifar_bin(root: Path, batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        records = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    return folder


def write_cifar_py(root: Path, batches: dict[str, tuple[np.ndarray, np.ndarray]], protocol: int = 2) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():  # the real files' dict, as cPickle wrote it
        batch = {b"batch_label": f"{name} of 6".encode(), b"labels": [int(v) for v in labels],
                 b"data": data, b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return folder


def _check_cifar(loaded, batches):
    train_x, train_y, test_x, test_y = loaded
    assert train_x.shape == (15, 3, 32, 32) and test_x.shape == (3, 3, 32, 32)
    assert train_x.dtype == torch.float32 and test_y.dtype == torch.int64
    first, labels = batches["data_batch_1"]
    # each record: 1024 red, then green, then blue bytes, row-major
    assert torch.equal(train_x[0, 0], torch.from_numpy(first[0, :1024].reshape(32, 32) / 255.0).float())
    assert torch.equal(train_x[1, 2], torch.from_numpy(first[1, 2048:].reshape(32, 32) / 255.0).float())
    assert torch.equal(train_y[:3], torch.from_numpy(labels.astype(np.int64)))
    assert torch.equal(test_y, torch.from_numpy(batches["test_batch"][1].astype(np.int64)))


def test_cifar_binary_records_load_exactly(tmp_path):
    batches = cifar_batches()
    write_cifar_bin(tmp_path, batches)
    _check_cifar(load_cifar10(tmp_path), batches)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickled_batches_load_through_the_restricted_unpickler(tmp_path, protocol):
    batches = cifar_batches()
    write_cifar_py(tmp_path, batches, protocol)
    _check_cifar(load_cifar10(tmp_path), batches)


def test_cifar_pickles_written_by_old_numpy_load_and_binary_is_preferred(tmp_path):
    batches = cifar_batches()
    folder = write_cifar_py(tmp_path, batches, 2)
    for path in folder.iterdir():  # numpy 1.x (and the real Python 2 files) name numpy.core
        path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    _check_cifar(load_cifar10(tmp_path), batches)
    (folder / "test_batch").write_bytes(b"garbage")  # not read: the binary folder wins
    write_cifar_bin(tmp_path, batches)
    _check_cifar(load_cifar10(tmp_path), batches)


class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("payload, refused", [
    (_Evil(os.system, "touch {marker}"), r"(posix|os)\.system"),
    (_Evil(eval, "open({marker!r}, 'w')"), r"(__builtin__|builtins)\.eval"),
    (_Evil(np.save, "{marker}", np.zeros(1)), r"numpy\.save"),
    (_Evil(getattr, "text", "upper"), r"(__builtin__|builtins)\.getattr"),
])
def test_the_restricted_unpickler_refuses_every_other_global(tmp_path, payload, refused):
    marker = tmp_path / "pwned"
    payload.args = tuple(a.format(marker=str(marker)) if isinstance(a, str) else a for a in payload.args)
    batches = cifar_batches()
    folder = write_cifar_py(tmp_path, batches)
    evil = folder / "data_batch_3"
    evil.write_bytes(pickle.dumps({b"data": batches["data_batch_3"][0], b"labels": payload}, protocol=2))
    with pytest.raises(DataError, match=f"{re.escape(str(evil))}: not a CIFAR-10 batch: refused the global "
                                        f"{refused}"):
        load_cifar10(tmp_path)
    assert not marker.exists() and not Path(f"{marker}.npy").exists()


def test_a_latin1_only_codecs_global_and_corrupt_pickles_are_refused(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DataError, match=r"_codecs.encode is admitted only for latin-1 text"):
        read_pickled_batch(path)
    good = pickle.dumps({b"data": _bytes(2, 3072), b"labels": [1, 2]}, protocol=2)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=f"{path}: not a CIFAR-10 batch: corrupt or truncated pickle"):
        read_pickled_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072)), b"labels": [1, 2]}, protocol=2))
    with pytest.raises(DataError, match=r"'data' must be a uint8 array \(n, 3072\), got float64"):
        read_pickled_batch(path)
    path.write_bytes(pickle.dumps({b"data": _bytes(2, 3072), b"labels": [1]}, protocol=4))
    with pytest.raises(DataError, match="'labels' must be 2 integers"):
        read_pickled_batch(path)


def test_a_truncated_cifar_binary_batch_names_itself(tmp_path):
    folder = write_cifar_bin(tmp_path, cifar_batches())
    bad = folder / "data_batch_2.bin"
    bad.write_bytes(bad.read_bytes()[:-7])
    with pytest.raises(DataError, match=f"{bad}: truncated .* not a whole number of {RECORD}-byte records"):
        load_cifar10(tmp_path)
    bad.write_bytes(bytes([10]) + bytes(3072))
    with pytest.raises(DataError, match=f"{bad}: label 10 is outside 0..9"):
        load_cifar10(tmp_path)
    (folder / "test_batch.bin").unlink()
    with pytest.raises(DataError, match=f"missing: {folder / 'test_batch.bin'}"):
        check_files("cifar10", tmp_path)
    with pytest.raises(DataError, match=r"cifar-10-batches-bin .*or .*cifar-10-batches-py.*neither exists"):
        load_cifar10(tmp_path / "elsewhere")


# -- FEMNIST (LEAF JSON) ------------------------------------------------------------------------------

def leaf_doc(users: dict[str, list[int]]) -> dict:
    return {"users": list(users), "num_samples": [len(y) for y in users.values()],
            "user_data": {u: {"x": [[(i + k) % 7 / 6.0] * 784 for k in range(len(y))], "y": y}
                          for i, (u, y) in enumerate(users.items())}}


def write_femnist(root: Path) -> None:
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "train" / "all_data_0_niid_train.json").write_text(json.dumps(leaf_doc(
        {"f0003_11": [1, 2, 3], "f0001_40": [4, 61]})))
    (root / "train" / "all_data_1_niid_train.json").write_text(json.dumps(leaf_doc(
        {"f0002_07": [5, 6, 7, 8]})))
    (root / "test" / "all_data_0_niid_test.json").write_text(json.dumps(leaf_doc(
        {"f0003_11": [9], "f0001_40": [10, 11], "f0002_07": [12]})))


def test_femnist_loads_leaf_json_with_its_writers(tmp_path):
    write_femnist(tmp_path)
    w = load_femnist(tmp_path)
    assert w.writers == ("f0001_40", "f0002_07", "f0003_11")
    assert w.train_x.shape == (9, 1, 28, 28) and w.train_x.dtype == torch.float32
    assert w.train_y.tolist() == [4, 61, 5, 6, 7, 8, 1, 2, 3]  # grouped by writer, writers sorted
    assert w.train_writers.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert w.test_y.tolist() == [10, 11, 12, 9] and w.test_writers.tolist() == [0, 0, 1, 2]
    assert float(w.train_x[0].max()) == pytest.approx(1 / 6) and float(w.train_x.max()) <= 1.0


def test_the_natural_partition_gives_each_client_one_writer(tmp_path):
    write_femnist(tmp_path)
    config = TaskConfig(dataset="femnist", data=str(tmp_path), num_clients=2,
                        partition=PartitionConfig("natural"), model="cnn")
    task = build_task(config, seed=3)
    assert task.data.num_classes == 62 and task.data.input_shape == (1, 28, 28)
    sizes = task.data.client_sizes()
    assert sorted(sizes) in ([2, 3], [2, 4], [3, 4]) and sum(sizes) == task.data.train_y.shape[0]
    labels = {tuple(task.data.client(i).y.tolist()) for i in range(2)}
    assert labels <= {(4, 61), (5, 6, 7, 8), (1, 2, 3)}
    tests = {(4, 61): [10, 11], (5, 6, 7, 8): [12], (1, 2, 3): [9]}  # the chosen writers' test examples
    assert sorted(task.data.test_y.tolist()) == sorted(y for k in labels for y in tests[k])
    again = build_task(config, seed=3)
    assert torch.equal(again.data.train_y, task.data.train_y)
    chosen = {tuple(build_task(config, seed=s).data.train_y.tolist()) for s in range(8)}
    assert len(chosen) > 1  # a seeded choice of writers, not always the first ones
    with pytest.raises(DataError, match="the data has 3 writers, asked for 4 clients"):
        build_task(replace(config, num_clients=4), seed=0)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["user_data"]["a"]["x"][0].pop(), "'x' must be rows of 784 numbers"),
    (lambda d: d["user_data"]["a"]["x"][0].__setitem__(0, 1.5), r"pixel values must be in \[0, 1\]"),
    (lambda d: d["num_samples"].__setitem__(0, 3), "num_samples says 3, 'x' holds 2 rows"),
    (lambda d: d["user_data"]["a"]["y"].__setitem__(1, 62), "label 62 is outside 0..61"),
    (lambda d: d["user_data"].pop("a"), "user 'a' is in 'users' but not in 'user_data'"),
    (lambda d: d.pop("users"), "not a LEAF JSON file"),
])
def test_a_malformed_leaf_file_names_itself(tmp_path, edit, message):
    write_femnist(tmp_path)
    doc = leaf_doc({"a": [0, 1]})
    edit(doc)
    bad = tmp_path / "train" / "all_data_2_niid_train.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=f"{bad}: .*{message}"):
        load_femnist(tmp_path)


def test_femnist_file_level_errors(tmp_path):
    write_femnist(tmp_path)
    dup = tmp_path / "train" / "all_data_9_niid_train.json"
    dup.write_text(json.dumps(leaf_doc({"f0002_07": [1]})))
    with pytest.raises(DataError, match=f"{dup}: writer 'f0002_07' is also in"):
        load_femnist(tmp_path)
    dup.write_text("{not json")
    with pytest.raises(DataError, match=f"{dup}: not a LEAF JSON file: not valid JSON"):
        load_femnist(tmp_path)
    dup.unlink()
    for path in (tmp_path / "test").iterdir():
        path.unlink()
    expected = re.escape(f"expected LEAF's JSON files in {tmp_path / 'test' / '*.json'}")
    with pytest.raises(DataError, match=expected):
        load_femnist(tmp_path)


# -- MedMNIST -----------------------------------------------------------------------------------------

def write_medmnist(root: Path, name: str, colour: bool, classes: int = 4, **extra: np.ndarray) -> dict:
    shape = (28, 28, 3) if colour else (28, 28)
    arrays = {f"{s}_images": _bytes(n, *shape) for s, n in (("train", 10), ("val", 3), ("test", 5))}
    arrays |= {f"{s}_labels": (np.arange(n) % classes).astype(np.uint8)[:, None]
               for s, n in (("train", 10), ("val", 3), ("test", 5))}
    arrays |= extra
    np.savez_compressed(root / f"{name}.npz", **arrays)
    return arrays


@pytest.mark.parametrize("name, colour", [("organamnist", False), ("bloodmnist", True)])
def test_medmnist_npz_loads_grey_and_colour_sets(tmp_path, name, colour):
    arrays = write_medmnist(tmp_path, name, colour)
    train_x, train_y, test_x, test_y = load_medmnist(tmp_path, name)
    c = 3 if colour else 1
    assert train_x.shape == (10, c, 28, 28) and test_x.shape == (5, c, 28, 28)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64 and train_y.shape == (10,)
    want = arrays["train_images"][3] if not colour else arrays["train_images"][3][..., 2]
    assert torch.equal(train_x[3, c - 1], torch.from_numpy(want / 255.0).float())
    assert test_y.tolist() == [0, 1, 2, 3, 0]
    split = load_dataset(f"medmnist:{name}", tmp_path)
    assert split.num_classes == 4


def test_medmnist_refuses_multi_label_pickled_and_incomplete_files(tmp_path):
    with pytest.raises(ConfigError, match="medmnist:chestmnist is multi-label"):
        TaskConfig(dataset="medmnist:chestmnist", data=str(tmp_path))
    write_medmnist(tmp_path, "pathmnist", True, train_labels=np.zeros((10, 14), np.uint8))
    with pytest.raises(DataError, match=r"pathmnist.npz: 'train_labels' is multi-label \(10, 14\)"):
        load_medmnist(tmp_path, "pathmnist")
    arrays = write_medmnist(tmp_path, "dermamnist", False)
    np.savez(tmp_path / "dermamnist.npz", **(arrays | {"train_labels": np.array([object()], dtype=object)}))
    with pytest.raises(DataError, match=r"dermamnist.npz: not a readable MedMNIST .npz"):
        load_medmnist(tmp_path, "dermamnist")
    np.savez(tmp_path / "octmnist.npz", train_images=_bytes(2, 28, 28))
    with pytest.raises(DataError, match=r"octmnist.npz: missing the array.*train_labels"):
        load_medmnist(tmp_path, "octmnist")
    (tmp_path / "retinamnist.npz").write_bytes(b"PK\x03\x04truncated")
    with pytest.raises(DataError, match=r"retinamnist.npz: not a readable MedMNIST"):
        load_medmnist(tmp_path, "retinamnist")
    with pytest.raises(DataError, match=f"expected the file {tmp_path / 'tissuemnist.npz'}"):
        load_medmnist(tmp_path, "tissuemnist")
    with pytest.raises(ConfigError, match="medmnist:<name> needs a MedMNIST file name"):
        TaskConfig(dataset="medmnist:../secrets", data=str(tmp_path))


# -- TaskConfig, models, build_task ----------------------------------------------------------------

def test_task_config_names_the_data_field_and_the_bound(tmp_path):
    with pytest.raises(ConfigError, match=r"data: mnist loads from local files: give the folder holding "
                                          r".*MNIST/raw/train-images-idx3-ubyte.*nothing is downloaded"):
        TaskConfig(dataset="mnist")
    with pytest.raises(ConfigError, match="data: digits ships with scikit-learn and reads no files"):
        TaskConfig(data=str(tmp_path))
    with pytest.raises(ConfigError, match="dataset: must be one of digits, mnist, fashion-mnist, cifar10, "
                                          "femnist, medmnist:<name>"):
        TaskConfig(dataset="imagenet", data=str(tmp_path))
    with pytest.raises(ConfigError, match=r"partition.kind: 'natural' gives each client one writer, and "
                                          r"mnist has no writers"):
        TaskConfig(dataset="mnist", data=str(tmp_path), partition=PartitionConfig("natural"))
    with pytest.raises(DataError, match="'natural' gives each client one writer, and this data set has "
                                        "no writers"):
        PartitionConfig("natural").split(np.zeros(4, np.int64), 2, seed=0)
    assert TaskConfig(dataset="cifar10", data=tmp_path).data == str(tmp_path)  # a Path is kept as text
    assert TaskConfig.from_dict(TaskConfig(dataset="mnist", data="/d").to_dict()).data == "/d"


@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn-bn"])
def test_models_take_mnist_and_cifar_inputs_and_keep_digits_sizes(name):
    digits = {"mlp": 4810, "cnn": 9930, "cnn-bn": 10026}
    assert sum(p.numel() for p in build_model(name, (1, 8, 8), 10).parameters()) == digits[name]
    for shape, classes in (((1, 28, 28), 62), ((3, 32, 32), 10), ((3, 28, 28), 9)):
        assert build_model(name, shape, classes)(torch.zeros(2, *shape)).shape == (2, classes)


def test_build_task_uses_the_data_sets_own_test_split_and_subsets(tmp_path):
    arrays = write_mnist(tmp_path, n_train=30, n_test=8)
    task = build_task(TaskConfig(dataset="mnist", data=str(tmp_path), num_clients=3, model="cnn"), seed=0)
    assert task.data.input_shape == (1, 28, 28) and task.data.num_classes == 10
    assert torch.equal(task.data.test_y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)))
    assert sum(task.data.client_sizes()) == 30
    small = build_task(TaskConfig(dataset="mnist", data=str(tmp_path), num_clients=3, train_size=12,
                                  test_size=4), seed=0)
    assert sum(small.data.client_sizes()) == 12 and small.data.test_y.shape == (4,)
    with pytest.raises(DataError, match="train_size: asked for 31 train examples, the data set has 30"):
        build_task(TaskConfig(dataset="mnist", data=str(tmp_path), num_clients=3, train_size=31), seed=0)


def test_a_client_builds_the_servers_task_on_its_own_copy_of_the_data(tmp_path):
    mine = tmp_path / "client"
    write_mnist(mine, n_train=20, n_test=4)
    server = TaskConfig(dataset="mnist", data=str(tmp_path / "server-only"), num_clients=2)
    task = local_data_factory(None, data=mine)(server, 0)  # the server's path does not exist here
    assert task.data.input_shape == (1, 28, 28) and sum(task.data.client_sizes()) == 20
    with pytest.raises(ConfigError, match=r"--data: the server's run trains on mnist: give this machine's "
                                          r"copy .*the server's path is never used"):
        local_data_factory(None)(server, 0)
    with pytest.raises(ConfigError, match="--dataset: this client names cifar10, the server's run trains "
                                          "on mnist"):
        local_data_factory(None, dataset="cifar10", data=mine)(server, 0)
    with pytest.raises(ConfigError, match="--data: the server's run trains on digits"):
        local_data_factory(None, data=mine)(TaskConfig(num_clients=2), 0)


# -- the command line and the bench ------------------------------------------------------------------

def test_secagg_train_on_mnist_files_through_the_cli(tmp_path, capsys):
    from secagg.cli import main

    write_mnist(tmp_path / "data", n_train=24, n_test=8, gz=True)
    out = tmp_path / "run"
    code = main(["train", "--dataset", "mnist", "--data", str(tmp_path / "data"), "--clients", "3",
                 "--rounds", "1", "--local-epochs", "1", "--model", "cnn", "--batch-size", "8",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    assert "FedAvg on mnist" in capsys.readouterr().out
    task = json.loads((out / "results.json").read_text())["config"]["task"]
    assert task["dataset"] == "mnist" and task["data"] == str(tmp_path / "data")
    assert main(["train", "--dataset", "mnist", "--data", str(tmp_path / "empty"), "--rounds", "1",
                 "--out", str(tmp_path / "run2"), "--no-progress"]) == 2
    assert "mnist: the data folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "mnist", "--out", str(tmp_path / "run3"), "--no-progress"])
    assert "--data: mnist loads from local files" in capsys.readouterr().err


def test_every_process_takes_dataset_and_data_flags():
    from secagg.cli import _build_parser

    parser = _build_parser()
    for argv in (["train"], ["bench"], ["serve", "--registry", "r.json"],
                 ["client", "--address", "a:1", "--id", "0", "--identity", "i.pem"]):
        args = parser.parse_args([*argv, "--dataset", "cifar10", "--data", "/x"])
        assert args.dataset == "cifar10" and str(args.data) == "/x"


def test_bench_presets_name_their_data_set_and_say_what_is_missing(tmp_path, capsys):
    from attacks.bench.config import PRESETS, load, with_data
    from attacks.bench.runner import cells, run_cell
    from secagg.cli import main

    expected = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "cifar10": "cifar10",
                "femnist": "femnist", "medmnist": "medmnist:bloodmnist"}
    for preset, dataset in expected.items():
        grid = load(preset=preset)
        assert preset in PRESETS and grid.dataset == dataset and grid.model == "cnn" and cells(grid)
    assert main(["bench", "--preset", "mnist", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"does not hold the data set's files; missing: {tmp_path / 'MNIST' / 'raw'}" in err
    assert "Nothing is downloaded" in err
    assert main(["bench", "--preset", "femnist", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "give the folder holding them with --data PATH" in capsys.readouterr().err

    write_mnist(tmp_path, n_train=16, n_test=6)  # one cell of the mnist grid, cut down, on these files
    grid = replace(with_data(load(preset="mnist"), data=tmp_path), rounds=1, clients=4, train_size=None,
                   test_size=None)
    row = run_cell(grid, next(c for c in cells(grid) if c.attack == "sign-flip"))
    assert row["rounds"] == 1 and 0.0 <= row["accuracy"] <= 1.0


@pytest.mark.slow
def test_a_deployment_loads_mnist_from_each_machines_own_folder(tmp_path, deployment):
    """The server and the clients read their own copies (the server's path, named in the configuration
    the clients receive, is gone before they start), and the deployment trains exactly what the
    simulation trains on the same files."""
    from secagg.cli import main

    server_copy, client_copy = tmp_path / "server-data", tmp_path / "client-data"
    write_mnist(server_copy, n_train=24, n_test=8)
    shutil.copytree(server_copy, client_copy)  # one copy per machine, the same bytes
    flags = ("--dataset", "mnist", "--model", "cnn", "--local-epochs", "1", "--batch-size", "8")
    dep = deployment(3)
    dep.serve(*flags, "--data", str(server_copy), rounds=2)
    shutil.rmtree(server_copy)  # the server has loaded its copy; a client reading that path would fail
    for u in range(3):
        dep.client(u, "--data", str(client_copy))
    deployed = dep.wait_server()["rounds"]
    out = tmp_path / "sim"
    assert main(["train", *flags, "--data", str(client_copy), "--clients", "3", "--fraction", "1",
                 "--rounds", "2", "--out", str(out), "--no-progress"]) == 0
    simulated = json.loads((out / "results.json").read_text())["rounds"]
    assert [r["accuracy"] for r in deployed] == [r["accuracy"] for r in simulated]
