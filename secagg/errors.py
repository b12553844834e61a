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
    """A rule of the protocol was broken. Catch the subclass that says by whom (as h11 splits
    ``LocalProtocolError`` from ``RemoteProtocolError``): :class:`RemoteProtocolError`, a peer's
    message (drop it, or the peer; the receiving state machine is unchanged), or
    :class:`LocalProtocolError`, this side's caller driving its state machine wrongly (a bug to fix)."""


class RemoteProtocolError(ProtocolError):
    """A peer sent a message that breaks the protocol; the round cannot use it."""


class LocalProtocolError(ProtocolError):
    """The caller drove a protocol state machine wrongly (started it twice, advanced with nothing to
    close, gave it inputs or keys that do not fit): a bug on this side, never the peer's doing."""


class WireError(RemoteProtocolError):
    """Bytes that do not decode to a valid message of the current wire-format version."""


class AbortError(SecAggError):
    """The secure-aggregation round cannot complete (too few clients left, or a party refused)."""
