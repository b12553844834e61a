"""A property-based testing kit (on hypothesis) for users extending the library.

``secagg.testing.strategies`` generates federated inputs (update stacks and batches, client
populations, dropout schedules, attacker placements, hostile bytes); ``secagg.testing.checks`` runs
conformance properties against your own aggregator, secure-sum implementation or message codec.
Noise samplers are checked by :func:`dp.testing.check_noise_mechanism`. See ``docs/testing.md``.
"""

from secagg.testing.checks import check_aggregator, check_message_codec, check_secure_sum
from secagg.testing.strategies import (
    attacker_placements,
    client_populations,
    dropout_schedules,
    hostile_bytes,
    update_batches,
    update_stacks,
)

__all__ = [
    "attacker_placements",
    "check_aggregator",
    "check_message_codec",
    "check_secure_sum",
    "client_populations",
    "dropout_schedules",
    "hostile_bytes",
    "update_batches",
    "update_stacks",
]
