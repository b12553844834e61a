"""Record-level claims of the benchmark's DP-FedAvg membership cells (issue 15, flaw 4).

Client-level DP does not give the same epsilon per record: removing one record keeps its client and
changes its data, a *replacement* of that client's update (L2 sensitivity 2C, noise multiplier z/2),
and only if no other record changes client. Tested on the deterministic part (the split the trainer
really uses, on neighbouring record sets) and on the epsilon a cell reports.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import secagg.data.federated as federated
from attacks.bench.privacy import (
    DELTA,
    FL_CLIENTS,
    FL_ROUNDS,
    PrivacyCell,
    _train_dp_fedavg,
    client_of,
    parse_cells,
    record_level_epsilon,
    run_privacy_cell,
    split_records,
)
from dp.accounting import GaussianAccountant
from secagg.errors import ConfigError
from secagg.seeding import numpy_rng


def _owners(records: np.ndarray, partition: tuple[np.ndarray, ...]) -> dict[int, int]:
    """Pool record -> client, from a partition of positions into ``records``."""
    return {int(records[pos]): c for c, part in enumerate(partition) for pos in part}


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 400), st.integers(0, 2**63 - 1), st.integers(1, 12), st.data())
def test_adding_one_record_moves_no_other_record(pool, key, clients, data):
    """Neighbouring record sets (one record added anywhere in the pool): every other record keeps its
    client, so exactly one client's data differ (the replace-one argument of record_level_epsilon)."""
    base = np.arange(pool + 1)
    added = data.draw(st.integers(0, pool))
    smaller = np.delete(base, added)
    before = _owners(smaller, split_records(smaller, key, clients))
    after = _owners(base, split_records(base, key, clients))
    assert set(after) - set(before) == {added}
    assert all(after[r] == c for r, c in before.items())
    assert after[added] == client_of(added, key, clients)
    assert 0 <= after[added] < clients


def test_the_dp_fedavg_trainer_splits_neighbouring_pools_stably(monkeypatch):
    """The partition _train_dp_fedavg really hands to FedAvg, for a record set with and without record
    136 (a removal shifts every later row: a permutation(len(x)) split reshuffled all clients)."""
    seen = []

    class Captured(Exception):
        pass

    def capture(x, y, test_x, test_y, partition, classes):
        seen.append(partition)
        raise Captured

    monkeypatch.setattr(federated, "FederatedDataset", capture)
    gen = torch.Generator().manual_seed(0)
    cell = PrivacyCell(attack="lira", defence="dp_fedavg", noise_multiplier=1.0, pool=400)
    full = np.arange(0, 400, 2)  # a target's records: pool indices
    fewer = full[full != 136]
    for records in (full, fewer):
        x = torch.rand(len(records), 1, 8, 8, generator=gen)
        y = torch.randint(0, 10, (len(records),), generator=gen)
        with pytest.raises(Captured):
            _train_dp_fedavg(x, y, records, 10, cell, seed=5, split_key=11)
    before, after = _owners(fewer, seen[1]), _owners(full, seen[0])
    assert all(after[r] == c for r, c in before.items())
    changed = [c for c in range(FL_CLIENTS) if sorted(r for r in after if after[r] == c)
               != sorted(r for r in before if before[r] == c)]
    assert changed == [after[136]]  # exactly one client's data differ
    # The split before issue 15, on the same neighbours: many records change client (78 of 199).
    old = [_owners(r, tuple(np.array_split(numpy_rng(5, "privacy-fl-split").permutation(len(r)), FL_CLIENTS)))
           for r in (full, fewer)]
    moved = sum(old[0][r] != c for r, c in old[1].items())
    assert moved > 20


def test_dp_fedavg_cell_reports_the_replace_one_record_epsilon():
    """The record-level epsilon of a DP-FedAvg cell is GaussianAccountant at z/2 (replace one client's
    update), computed here independently, and exceeds the add/remove-one-client figure it used to print."""
    torch.set_num_threads(1)
    z = 2.0
    cell = PrivacyCell(attack="loss_threshold", defence="dp_fedavg", noise_multiplier=z, shadows=2,
                       targets=1, pool=200)
    row = run_privacy_cell(cell, seed=0)
    replace_one = GaussianAccountant(z / 2, 1.0, "rdp", "none").epsilon(FL_ROUNDS, 1e-5)
    add_remove_client = GaussianAccountant(z, 1.0, "rdp", "none").epsilon(FL_ROUNDS, 1e-5)
    assert row["epsilon"] == pytest.approx(replace_one, rel=1e-12)
    assert row["epsilon_record"] == row["epsilon"]
    assert row["epsilon_client"] == pytest.approx(add_remove_client, rel=1e-12)
    assert row["epsilon"] > 2 * add_remove_client  # 30.1 vs 12.3 here
    assert "replace one client" in row["epsilon_relation"]
    assert 0.0 <= row["auc"] <= 1.0 and math.isfinite(row["tpr_at_1pct_fpr"])


def test_record_level_epsilon_contract():
    half = GaussianAccountant(1.0, 1.0, "rdp", "none")  # z = 2 against sensitivity 2C
    assert record_level_epsilon(2.0, 20, DELTA) == half.epsilon(20, DELTA)
    assert record_level_epsilon(2.0, 0, DELTA) == 0.0
    with pytest.raises(ConfigError, match="sampling: record-level accounting of DP-FedAvg supports only"):
        record_level_epsilon(2.0, 20, DELTA, sampling="poisson")
    with pytest.raises(ConfigError, match=r"privacy\[0\].pool: dp_fedavg needs a pool >= 200, got 100"):
        parse_cells([{"attack": "lira", "defence": "dp_fedavg", "noise_multiplier": 1.0, "pool": 100}])
