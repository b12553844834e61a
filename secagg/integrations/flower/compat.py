"""Which Flower this integration runs on, and a clear error when it is missing or another one."""

from __future__ import annotations

from importlib import metadata

from secagg.errors import ConfigError

#: the Flower releases this integration is tested against (the Message API of flwr 1.42)
SUPPORTED = ((1, 42), (1, 43))
INSTALL_HINT = 'pip install "secagg[flower]"'


def flwr_version() -> tuple[int, int]:
    """Flower's (major, minor); :class:`ConfigError` when flwr is not installed or not supported."""
    try:
        text = metadata.version("flwr")
    except metadata.PackageNotFoundError:
        raise ConfigError(f"flwr: Flower is not installed; the Flower integration needs flwr "
                          f"{_supported()} ({INSTALL_HINT})") from None
    parts = text.split(".")
    try:
        version = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        raise ConfigError(f"flwr: cannot read Flower's version {text!r}") from None
    if version not in SUPPORTED:
        raise ConfigError(f"flwr: Flower {text} is installed; this integration supports flwr "
                          f"{_supported()} (its Message API) ({INSTALL_HINT})")
    return version


def _supported() -> str:
    return " or ".join(f"{a}.{b}" for a, b in SUPPORTED)
