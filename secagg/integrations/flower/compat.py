"""Which Flower this integration runs on, and a clear error when it is missing or another one."""

from __future__ import annotations

from importlib import metadata

from secagg.errors import ConfigError

#: the Flower releases this integration is tested against (the Message API of flwr 1.42)
SUPPORTED = ((1, 42),)
INSTALL_HINT = 'pip install "secagg[flower]"'


class FlowerUnavailable(ConfigError, ImportError):
    """flwr is missing or not a supported release: a :class:`ConfigError` that ``except ImportError``
    (the usual guard around an optional integration) catches too."""


def flwr_version() -> tuple[int, int]:
    """Flower's (major, minor); :class:`FlowerUnavailable` when flwr is not installed or not supported."""
    try:
        text = metadata.version("flwr")
    except metadata.PackageNotFoundError:
        raise FlowerUnavailable(f"flwr: Flower is not installed; the Flower integration needs flwr "
                          f"{_supported()} ({INSTALL_HINT})") from None
    parts = text.split(".")
    try:
        version = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        raise FlowerUnavailable(f"flwr: cannot read Flower's version {text!r}") from None
    if version not in SUPPORTED:
        raise FlowerUnavailable(f"flwr: Flower {text} is installed; this integration supports flwr "
                          f"{_supported()} (its Message API) ({INSTALL_HINT})")
    return version


def _supported() -> str:
    return " or ".join(f"{a}.{b}" for a, b in SUPPORTED)
