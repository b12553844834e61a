"""Load ByzFL's aggregators as a reference implementation, for conformance tests and benchmarks.

ByzFL (https://github.com/LPD-EPFL/byzfl, pinned to 0.0.11 here) is not a dependency of this
library: CI installs it with ``pip install --no-deps byzfl==0.0.11``. Its package ``__init__``
imports its training framework (torchvision and more), which the aggregators do not need, so
:func:`load_byzfl_aggregators` imports ``byzfl.aggregators`` without running that ``__init__``: it
registers a bare package object for ``byzfl`` (the right ``__path__``, nothing executed) before the
import. Nothing of ByzFL is imported anywhere else in :mod:`secagg`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass

#: the ByzFL release the conformance tests and benchmarks were written against
BYZFL_VERSION = "0.0.11"
INSTALL_HINT = f"pip install --no-deps byzfl=={BYZFL_VERSION}"


@dataclass(frozen=True)
class ByzFL:
    """ByzFL's two aggregation modules: ``aggregators`` (Median, TrMean, Krum, ...) and
    ``preaggregators`` (NNM, Bucketing, Clipping, ARC)."""

    aggregators: types.ModuleType
    preaggregators: types.ModuleType


def load_byzfl_aggregators() -> ByzFL:
    """Import ByzFL's aggregator modules without its package ``__init__``.

    Raises :class:`ImportError` naming the install command when byzfl (or scipy, which its numpy
    backend uses) is not installed.
    """
    spec = importlib.util.find_spec("byzfl") if "byzfl" not in sys.modules else None
    if "byzfl" not in sys.modules:
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"byzfl is not installed; the ByzFL conformance checks need it: "
                              f"{INSTALL_HINT}")
        package = types.ModuleType("byzfl")
        package.__path__ = list(spec.submodule_search_locations)  # submodules resolve, __init__ not run
        package.__spec__ = spec
        package.__file__ = spec.origin
        sys.modules["byzfl"] = package
    try:
        aggregators = importlib.import_module("byzfl.aggregators.aggregators")
        preaggregators = importlib.import_module("byzfl.aggregators.preaggregators")
    except ImportError as exc:
        raise ImportError(f"byzfl's aggregators failed to import ({exc}); install the pinned release "
                          f"and scipy: {INSTALL_HINT}") from exc
    return ByzFL(aggregators=aggregators, preaggregators=preaggregators)
