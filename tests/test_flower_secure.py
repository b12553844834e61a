"""secagg's SecAgg inside a real Flower app, on Flower's simulation engine.

One simulation per mode runs a round per dropout stage, a round where too many drop, and a round
played by a hostile server that asks for both shares of one peer; every round's unmasked sum must
be exactly the sum of its survivors' quantized inputs, or the round must abort and leave the model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from flower_sim import STAGES, load_inputs, make_client_app, make_server_app, simulate

from secagg.aggregation import SecureSum
from secagg.crypto.keys import SigningKey
from secagg.integrations.flower import SecAggStrategy
from secagg.protocol.messages import UnmaskRequest
from secagg.protocol.wire import decode, encode
from secagg.transport.auth import save_identity

N = 6
HOSTILE = 9  # the round a hostile server asks for both shares of one peer


class BothSharesServer(SecAggStrategy):
    """A Flower server that, in round ``HOSTILE``, first collects every client's b-share of peer 0
    with an honest unmask request, then asks for peer 0's mask-key share too."""

    def protocol_messages(self, server_round, outgoing, node_of):
        requests = {c: decode(data) for c, data in outgoing.items()}
        if server_round != HOSTILE or not all(isinstance(m, UnmaskRequest) for m in requests.values()):
            return super().protocol_messages(server_round, outgoing, node_of)
        honest = super().protocol_messages(server_round, outgoing, node_of)
        got = list(self._grid.send_and_receive(honest, timeout=self.stage_timeout))
        self.first_answers = sum(not m.has_error() for m in got)
        hostile = {}
        for c, m in requests.items():
            survivors = tuple(u for u in m.survivors if u != 0)
            hostile[c] = encode(UnmaskRequest(m.session_id, survivors, tuple(sorted({*m.dropped, 0})),
                                              m.signatures))
        return super().protocol_messages(server_round, hostile, node_of)


def drop_plan(malicious: bool) -> dict[int, Mapping[str, set[int]]]:
    stages = [s for s in STAGES if malicious or s != "consistency"]
    plan: dict[int, Mapping[str, set[int]]] = {r + 2: {stage: {r % N}} for r, stage in enumerate(stages)}
    plan[len(stages) + 2] = {"task": {0, 1, 2}}  # 3 of 6 left: below the threshold 4, the round aborts
    return plan


@pytest.mark.parametrize("malicious", [False, True], ids=["honest", "malicious"])
def test_flower_rounds_sum_exactly_their_survivors_or_abort(tmp_path, malicious):
    rule = SecureSum(value_range=1.0, weight_bound=20.0, malicious=malicious)
    plan = drop_plan(malicious)
    assert max(plan) < HOSTILE
    rounds = HOSTILE + 1
    keys = {p: SigningKey.generate() for p in range(N)} if malicious else {}
    identities = {}
    for p, key in keys.items():
        identities[p] = tmp_path / f"client-{p}.pem"
        save_identity(identities[p], key)
    registry = {p: k.public for p, k in keys.items()} or None
    strategy = BothSharesServer(rule, fraction_evaluate=0.0, min_available_nodes=N, registry=registry,
                                stage_timeout=90.0)
    result: dict = {}
    simulate(make_server_app(strategy, rounds, result),
             make_client_app(rule, tmp_path, plan, registry=registry, identities=identities or None), N)
    history = result["history"]
    assert [h.round for h in history] == list(range(1, rounds + 1))
    bits = 32
    moved = np.zeros(7)
    for h in history:
        if h.round == HOSTILE:
            assert h.aborted is not None and h.update is None
            assert strategy.first_answers == N  # the honest request was answered ...
            # ... the second refused by every client: peer 0's holders as a request for both shares,
            # peer 0 itself as a request that leaves it out of the survivors
            assert sorted(h.failed) == list(range(N)), h.failed
            # (malicious mode: the sets differ from the ones every client signed, refused before that)
            why = "other survivor/dropped sets" if malicious else "both the self-mask share"
            refused = sorted(c for c, reason in h.failed.items() if why in reason)
            assert refused == list(range(N) if malicious else range(1, N)), h.failed
            continue
        if h.round == max(plan):
            assert h.aborted is not None and h.update is None, "3 of 6 clients cannot make a sum"
            continue
        assert h.aborted is None, (h.round, h.aborted, h.failed)
        dropped_at = plan.get(h.round, {})
        victims = set().union(*dropped_at.values()) if dropped_at else set()
        early = {"task", "share-keys", "share-check", "masked-input"} & set(dropped_at)
        if early:
            assert not victims & set(h.survivors)
        assert len(h.survivors) >= N - 1
        (session_sum,) = h.sums
        want = np.zeros_like(session_sum, dtype=np.uint64)
        for words in load_inputs(tmp_path, h.round, h.survivors):
            want = (want + words.astype(np.uint64)) % (1 << bits)
        assert np.array_equal(session_sum.astype(np.uint64), want), f"round {h.round}: inexact sum"
        moved += h.update.double().numpy()
    # training finished: the model moved by exactly the rounds that produced an update
    assert np.allclose(result["w"], moved, atol=1e-5)
    assert result["step"].tolist() == [3]  # integer arrays stay the server's
