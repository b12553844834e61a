"""Imprint and trap-weights models (a malicious server): what secure aggregation, DP and the client's
model check do and do not stop."""

from __future__ import annotations

import pytest
import torch

from attacks.bench.privacy import PrivacyCell, parse_cells, run_privacy_cell
from attacks.imprint import (
    ImprintModel,
    check_first_round_model,
    imprint_direction,
    imprint_thresholds,
    malicious_model,
    recover_imprint,
    recover_trap,
    run_attack,
    state_commitment,
)
from secagg.data.digits import load_digits_split
from secagg.errors import ConfigError, RemoteProtocolError

# Measured (seed 0, 8 clients x 4 digits, 256 bins, 32-bit secure sum): 26 of the 32 examples
# recovered at >= 30 dB (most at 100-136 dB: float32 client updates and the quantization bound limit
# it), the other 6 share a bin or fall below the first threshold (12-15 dB, blends); trap weights: 16
# of 32; clip without noise (z = 1e-7): 26 of 32; z >= 1e-2: none. The bars leave slack and sit far
# above an uninformed guess (the public mean image, ~11 dB).
SMALL = {"clients": 8, "batch_size": 4, "bins": 256}
EXACT_DB = 30.0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def secure():
    return run_attack("imprint", "secure_sum", **SMALL)


def test_the_imprint_recovers_examples_exactly_through_a_secure_sum_of_8_clients(secure):
    assert secure.metrics["survivors"] == 8 and secure.metrics["clipped_fraction"] == 0.0  # a real session
    exact = float((secure.truth_psnr >= EXACT_DB).double().mean())
    assert exact >= 0.7, secure.truth_psnr
    assert float(secure.psnr.median()) > 60.0
    assert secure.metrics["baseline_psnr"] < 20.0  # the threshold is far above an uninformed guess
    assert secure.metrics["pixel_error_bound"] < 0.05  # quantization cannot move a pixel far


@pytest.mark.parametrize("defence", ["none", "secaggplus_malicious"])
def test_recovery_from_the_secure_sum_equals_recovery_from_the_plain_sum(secure, defence):
    """Secure aggregation (honest or malicious-server mode) hides nothing here: the same examples come
    out, to within the quantization bound."""
    other = run_attack("imprint", defence, **SMALL)
    assert torch.equal(other.truth, secure.truth)
    assert len(other.recovered) == len(secure.recovered)
    gap = float((other.recovered - secure.recovered).abs().max())
    assert gap <= secure.metrics["pixel_error_bound"] + 1e-4
    assert other.fraction_recovered == secure.fraction_recovered


def test_dp_noise_collapses_recovery_and_clipping_alone_does_not():
    clipped_only = run_attack("imprint", "dp_fedavg", noise_multiplier=1e-7, **SMALL)
    assert clipped_only.metrics["clipped_fraction"] > 0  # the clip did bind: it cancels in the ratio
    assert clipped_only.fraction_recovered >= 0.7
    for z in (1.0, 1e-2):
        noised = run_attack("imprint", "dp_fedavg", noise_multiplier=z, **SMALL)
        assert noised.fraction_recovered <= 1 / 32, (z, noised.truth_psnr)
        assert noised.metrics["epsilon"] is not None and noised.metrics["epsilon"] > 0


def test_trap_weights_keep_the_architecture_and_still_recover_examples():
    result = run_attack("trap_weights", "secure_sum_malicious", **SMALL)
    assert float((result.truth_psnr >= EXACT_DB).double().mean()) >= 0.25, result.truth_psnr


def _network_client():
    from secagg.crypto.keys import SigningKey
    from secagg.experiment import ExperimentConfig
    from secagg.task import TaskConfig, make_task
    from secagg.transport.node import NetworkClient

    config = ExperimentConfig(task=TaskConfig(num_clients=2))
    client = NetworkClient("127.0.0.1:1", 0, SigningKey.generate())  # train() never connects
    client._setup(config.to_json())
    return client, make_task(config.task, seed=config.seed).model


def _task(model: torch.nn.Module):
    import safetensors.torch

    from secagg.transport.envelope import Work, WorkKind

    return Work(WorkKind.TASK, 1, 0, safetensors.torch.save(model.state_dict()))


def test_a_deployed_client_refuses_the_inserted_imprint_module_but_not_trap_weights():
    """The deployment's model check (names, shapes, dtypes against the configured model) refuses an
    added layer; a same-architecture trap (trap weights, imprint folded into the first layer) passes it."""
    client, honest = _network_client()
    public = load_digits_split()[2]
    try:
        imprint, _ = malicious_model("imprint", honest, public, bins=64, examples=32)
        assert any(name.startswith("imprint.") for name in imprint.state_dict())
        with pytest.raises(RemoteProtocolError, match=r"Work\.model"):
            client.train(_task(imprint))
        for attack in ("trap_weights", "imprint_inplace"):
            same, _ = malicious_model(attack, honest, public, bins=64, examples=32)
            assert not torch.equal(same.state_dict()["net.1.weight"], honest.state_dict()["net.1.weight"])
            update = client.train(_task(same))  # not caught: the client trains on it
            assert update.delta.numel() == sum(v.numel() for v in honest.state_dict().values())
    finally:
        client.close()


def test_a_round_one_commitment_catches_same_architecture_traps():
    from secagg.task import TaskConfig, make_task

    honest = make_task(TaskConfig(num_clients=2), seed=0).model
    commitment = state_commitment(honest.state_dict())
    check_first_round_model(honest.state_dict(), commitment)
    public = load_digits_split()[2]
    for attack in ("trap_weights", "imprint_inplace"):
        model, _ = malicious_model(attack, honest, public, bins=64, examples=32)
        with pytest.raises(RemoteProtocolError, match="commitment"):
            check_first_round_model(model.state_dict(), commitment)
    with pytest.raises(ConfigError, match="commitment"):
        check_first_round_model(honest.state_dict(), b"short")


def test_one_example_per_bin_is_recovered_exactly_and_any_common_factor_cancels():
    """The closed form on autograd's own gradients: three examples in three different bins."""
    x = load_digits_split()[0][:3].double()
    m = imprint_direction("random", 64, 0).double()
    proj = x.flatten(1) @ m
    edges = torch.sort(proj).values
    thresholds = torch.stack([edges[0] - 1.0, (edges[0] + edges[1]) / 2, (edges[1] + edges[2]) / 2])
    body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).double()
    model = ImprintModel(body, m, thresholds).double()
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2]), reduction="sum")
    dw, db = torch.autograd.grad(loss, [model.imprint.weight, model.imprint.bias])
    rec = recover_imprint(dw, db, (1, 8, 8))
    assert len(rec.raw) == 3
    assert torch.allclose(torch.sort(rec.raw.flatten(1), 0).values, torch.sort(x.flatten(1), 0).values,
                          atol=1e-9)
    scaled = recover_imprint(-0.37 * dw, -0.37 * db, (1, 8, 8))
    assert torch.allclose(scaled.raw, rec.raw, atol=1e-12)


@pytest.mark.parametrize(("call", "field"), [
    (lambda: run_attack(bins=1), "bins"),
    (lambda: run_attack(clients=1), "clients"),
    (lambda: run_attack(batch_size=0), "batch_size"),
    (lambda: run_attack(defence="median"), "defence"),
    (lambda: run_attack(attack="dlg"), "attack"),
    (lambda: run_attack(defence="dp_fedavg"), "noise_multiplier"),
    (lambda: run_attack(clients=400, batch_size=8), "clients, batch_size"),
    (lambda: run_attack(direction="up"), "direction"),
    (lambda: recover_trap(torch.zeros(4, 10), torch.zeros(4), (1, 8, 8)), "weight_update"),
    (lambda: imprint_thresholds(torch.zeros(5, 64), torch.ones(64), 4, prior="flat"), "prior"),
])
def test_validation_errors_name_the_field(call, field):
    with pytest.raises(ConfigError, match=rf"^{field}"):
        call()


@pytest.mark.parametrize(("table", "message"), [
    ({"attack": "imprint", "defence": "secure_sum", "clients": 1}, r"privacy\[0\]\.clients: imprint needs"),
    ({"attack": "imprint", "clients": 8, "batch_size": 0}, r"privacy\[0\]\.batch_size: expected an integer"),
    ({"attack": "trap_weights", "clients": 8, "bins": 1}, r"privacy\[0\]\.bins: expected an integer >= 2"),
    ({"attack": "imprint", "clients": 8, "defence": "dp"}, r"privacy\[0\]\.defence: 'dp' is not one of"),
    ({"attack": "imprint", "clients": 8, "defence": "dp_fedavg"}, r"privacy\[0\]\.noise_multiplier"),
    ({"attack": "imprint", "clients": 200, "batch_size": 8}, r"privacy\[0\]\.batch_size: 200 clients x 8"),
])
def test_a_malformed_imprint_cell_names_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        parse_cells([table])


def test_the_privacy_bench_runs_an_imprint_cell_and_writes_its_grid(tmp_path):
    (cell,) = parse_cells([{"attack": "imprint", "defence": "secure_sum", **SMALL}])
    assert cell == PrivacyCell(attack="imprint", defence="secure_sum", **SMALL)
    assert cell.defence_name == "secure_sum_8"
    row = run_privacy_cell(cell, 0, tmp_path)
    assert row["section"] == "privacy" and row["defence"] == "secure_sum_8"
    assert row["fraction_recovered"] >= 0.7 and row["psnr"] == row["psnr_mean"] > 60.0
    assert row["examples"] == 32 and row["epsilon"] is None
    assert (tmp_path / "imprint_imprint_secure_sum_8_0.png").stat().st_size > 0
