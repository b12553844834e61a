"""The randomized Hadamard rotation distributed DP uses: :mod:`secagg.rotation` (it moved into the core,
where the compressed secure sum uses it too); these names stay importable from here."""

from secagg.rotation import fwht, pad_length, rotate, signs, unrotate

__all__ = ["fwht", "pad_length", "rotate", "signs", "unrotate"]
