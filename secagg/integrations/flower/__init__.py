"""This library as the aggregation backend of a Flower app (flwr 1.42, Message API; extra
``secagg[flower]``).

Server (a ``ServerApp``)::

    strategy = SecAggStrategy(SecureSum(value_range=1.0, weight_bound=100))   # or any aggregator
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=5)

Clients (a ``ClientApp``; the training function is an ordinary Flower one)::

    app = ClientApp(mods=[secagg_mod(SecureSum(value_range=1.0, weight_bound=100))])

The strategy (:mod:`.strategy`) runs the server's part of the placed pipeline over Flower's grid; the
mod (:mod:`.mod`) runs the clients' part (client steps, the secure session). Importing this package
without flwr, or with an unsupported release, raises :class:`~secagg.errors.ConfigError` saying which
one to install.
"""

from secagg.integrations.flower.compat import SUPPORTED, flwr_version

flwr_version()

from secagg.integrations.flower.arrays import ArraysLayout, fingerprint  # noqa: E402
from secagg.integrations.flower.mod import SecAggMod, secagg_mod  # noqa: E402
from secagg.integrations.flower.strategy import RoundReport, SecAggStrategy  # noqa: E402

__all__ = ["SUPPORTED", "ArraysLayout", "RoundReport", "SecAggMod", "SecAggStrategy", "fingerprint",
           "flwr_version", "secagg_mod"]
