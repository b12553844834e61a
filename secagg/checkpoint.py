"""Checkpoints: tensors plus JSON metadata in one safetensors file, written atomically.

A checkpoint is a plain safetensors file (never pickle) whose ``__metadata__`` header holds three
strings:

* ``"format"``: :data:`FORMAT`;
* ``"secagg"``: the caller's metadata as canonical JSON (sorted keys, compact separators, ASCII);
* ``"sha256"``: a hex SHA-256 digest over the format, that exact JSON string and, for every
  tensor in sorted-name order, its name, dtype, shape and raw bytes (each field length-prefixed,
  so no two different checkpoints frame to the same byte stream).

The digest detects truncation and accidental corruption; it is not a signature and does not stop
someone who can write the file from forging a consistent one.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import struct
import tempfile
from collections.abc import Mapping
from typing import Any

import safetensors.torch
import torch
from safetensors.torch import load as load_safetensors  # tensors only: nothing executes

from secagg.errors import CheckpointError

__all__ = ["FORMAT", "load_checkpoint", "save_checkpoint"]

FORMAT = "secagg-checkpoint/1"

_FORMAT_KEY = "format"
_METADATA_KEY = "secagg"
_DIGEST_KEY = "sha256"
_HEADER_KEYS = frozenset({_FORMAT_KEY, _METADATA_KEY, _DIGEST_KEY})
_RESERVED_NAME = "__metadata__"  # safetensors' own header key; cannot name a tensor


def save_checkpoint(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                    metadata: Mapping[str, Any]) -> None:
    """Atomically write ``tensors`` and ``metadata`` to ``path`` as a checkpoint.

    ``tensors`` maps non-empty ``str`` names to dense tensors (any device; stored as contiguous
    CPU copies, the caller's tensors are never modified). It may be empty. ``metadata`` is a
    mapping with ``str`` keys whose values are JSON: ``None``, ``bool``, ``int``, finite ``float``,
    ``str``, lists/tuples (loaded back as lists) and ``str``-keyed mappings, nested freely.

    The bytes go to a temporary file in the same directory, which is fsynced and then renamed over
    ``path`` (parent directories are created first), so a reader sees either the old checkpoint or
    the new one, never a partial file. The new file has mode 0600. Raises :class:`CheckpointError`
    for invalid input or any I/O failure; the previous file at ``path`` is then left untouched and
    no temporary file is left behind.
    """
    target = os.fspath(path)
    meta_json = _encode_metadata(metadata)
    flat = _prepare_tensors(tensors)
    header = {
        _FORMAT_KEY: FORMAT,
        _METADATA_KEY: meta_json,
        _DIGEST_KEY: _digest(meta_json, flat),
    }
    try:
        data = safetensors.torch.save(flat, metadata=header)
    except Exception as exc:  # safetensors raises ValueError, RuntimeError, SafetensorError, ...
        raise CheckpointError(f"cannot serialize checkpoint {target!r}: {exc}") from exc
    _atomic_write(target, data)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; return ``(tensors, metadata)``.

    The tensors are fresh, writable, contiguous CPU tensors that share memory with nothing else;
    the metadata is the caller's dict as saved (tuples come back as lists). Raises
    :class:`CheckpointError` if the file is missing or unreadable, is truncated or not a
    safetensors file, has a missing or different :data:`FORMAT`, or fails the digest check. Never
    returns data that differs from what was saved.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as handle:
            data = handle.read()
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint not found: {source!r}") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {source!r}: {exc}") from exc

    try:
        loaded = load_safetensors(data)
        header = _read_header(data)
    except Exception as exc:  # SafetensorError, ValueError, KeyError (unknown dtype), ...
        raise CheckpointError(
            f"{source!r} is truncated or not a checkpoint: {exc}") from exc

    stored = header.get(_RESERVED_NAME)
    found = stored.get(_FORMAT_KEY) if isinstance(stored, dict) else None
    if found != FORMAT:
        raise CheckpointError(f"{source!r} has checkpoint format {found!r}, expected {FORMAT!r}")
    unexpected = sorted(set(stored) - _HEADER_KEYS)
    if unexpected:
        raise CheckpointError(f"{source!r} has unexpected header field(s) {unexpected}")
    meta_json = stored.get(_METADATA_KEY)
    expected_digest = stored.get(_DIGEST_KEY)
    if not isinstance(meta_json, str) or not isinstance(expected_digest, str):
        raise CheckpointError(f"{source!r} is corrupted: header lacks metadata or digest")

    # Hash the tensors exactly as parsed, before clone(): cloning a bool tensor normalizes a
    # corrupted byte such as 0x03 to 0x01, which would hide the damage from the digest.
    if not hmac.compare_digest(_digest(meta_json, loaded), expected_digest):
        raise CheckpointError(f"{source!r} is corrupted: digest mismatch")
    tensors = {name: tensor.clone() for name, tensor in loaded.items()}

    try:
        metadata = json.loads(meta_json)
    except ValueError as exc:
        raise CheckpointError(f"{source!r}: metadata is not valid JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise CheckpointError(
            f"{source!r}: metadata must be a JSON object, got {type(metadata).__name__}")
    return tensors, metadata


# --- helpers -------------------------------------------------------------------------------------


def _encode_metadata(metadata: Mapping[str, Any]) -> str:
    """Check ``metadata`` is JSON and return its canonical encoding."""
    if not isinstance(metadata, Mapping):
        raise CheckpointError(f"metadata: expected a mapping, got {type(metadata).__name__}")
    _check_json("metadata", metadata)
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _check_json(where: str, value: Any) -> None:
    """Raise naming the first key path whose value is not plain JSON.

    Stricter than :func:`json.dumps`: non-``str`` keys (which JSON would silently stringify, and
    which could collide) and NaN/infinity (not JSON) are rejected, so the loaded metadata equals the
    saved one.
    """
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CheckpointError(f"{where}: {value!r} is not JSON-serializable (not finite)")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(f"{where}[{index}]", item)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CheckpointError(
                    f"{where}: key {key!r} is not a str (JSON object keys must be strings)")
            _check_json(f"{where}[{key!r}]", item)
        return
    raise CheckpointError(
        f"{where}: value of type {type(value).__name__} is not JSON-serializable")


def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Validate names and values; return private contiguous CPU copies."""
    if not isinstance(tensors, Mapping):
        raise CheckpointError(f"tensors: expected a mapping, got {type(tensors).__name__}")
    flat: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"tensors: name {name!r} must be a non-empty str")
        if name == _RESERVED_NAME:
            raise CheckpointError(f"tensors: name {name!r} is reserved by safetensors")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CheckpointError(f"tensors: name {name!r} is not valid UTF-8") from exc
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"tensors[{name!r}]: expected a torch.Tensor, got {type(tensor).__name__}")
        if tensor.layout != torch.strided:
            raise CheckpointError(
                f"tensors[{name!r}]: layout {tensor.layout} is not supported (dense only)")
        try:
            # clone() always copies: the caller's tensor is never aliased, so no two entries share
            # memory (which safetensors refuses) and nobody can change the data mid-save.
            flat[name] = tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        except (RuntimeError, NotImplementedError) as exc:  # e.g. meta tensors
            raise CheckpointError(f"tensors[{name!r}]: cannot copy to CPU: {exc}") from exc
    return flat


def _digest(meta_json: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the format, the metadata JSON and every tensor, framed unambiguously."""
    hasher = hashlib.sha256()

    def field(payload: bytes | memoryview) -> None:
        hasher.update(struct.pack("<Q", len(payload)))
        hasher.update(payload)

    field(FORMAT.encode("ascii"))
    field(meta_json.encode("utf-8"))
    hasher.update(struct.pack("<Q", len(tensors)))
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        field(name.encode("utf-8"))
        field(str(tensor.dtype).encode("ascii"))
        hasher.update(struct.pack("<Q", tensor.dim()))
        hasher.update(struct.pack(f"<{tensor.dim()}Q", *tensor.shape))
        # reshape(-1) first: a 0-d tensor cannot be viewed as bytes directly.
        raw = tensor.reshape(-1).view(torch.uint8).numpy()
        field(memoryview(raw).cast("B"))
    return hasher.hexdigest()


def _read_header(data: bytes) -> dict[str, Any]:
    """Return the JSON header of safetensors ``data`` (already validated by safetensors)."""
    (length,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + length].decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    return header


def _atomic_write(target: str, data: bytes) -> None:
    """Write ``data`` to ``target`` via fsynced temp file + rename; clean up on any failure."""
    directory = os.path.dirname(os.path.abspath(target))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {target!r}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise CheckpointError(f"cannot write checkpoint {target!r}: {exc}") from exc
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable where the platform allows fsync on a directory (best effort)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
