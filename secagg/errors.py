"""The library's error hierarchy.

Every public entry point raises one of these, with a message that names the offending field and the
bound it broke. Callers can catch :class:`SecAggError` to handle anything the library rejects.
"""

from __future__ import annotations


class SecAggError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(SecAggError, ValueError):
    """A configuration value is out of range, of the wrong type, or inconsistent with another."""


class DataError(SecAggError, ValueError):
    """A dataset or partition request cannot be satisfied (too few samples, bad labels, ...)."""


class UpdateError(SecAggError, ValueError):
    """A model update or state dict is malformed: wrong shape, dtype, layout, or non-finite values."""


class CheckpointError(SecAggError):
    """A checkpoint is missing, truncated, corrupted, or belongs to a different configuration."""


class ProtocolError(SecAggError):
    """A protocol peer sent a message that breaks the protocol; the round cannot use it."""


class WireError(ProtocolError):
    """Bytes that do not decode to a valid message of the current wire-format version."""


class AbortError(SecAggError):
    """The secure-aggregation round cannot complete (too few clients left, or a party refused)."""
