"""Flattening state dicts: exact round trips, parameter/buffer order, and typed errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from secagg.errors import UpdateError
from secagg.layout import ParamLayout

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

entry = st.tuples(
    st.sampled_from(DTYPES),
    st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),
    st.booleans(),  # parameter (True) or buffer (False)
)


def _module(entries: list[tuple[torch.dtype, tuple[int, ...], bool]], seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    m = nn.Module()
    for i, (dtype, shape, is_param) in enumerate(entries):
        # random bits, not random floats: exercises every representable value, incl. subnormals
        t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        if is_param:
            m.register_parameter(f"p{i}", nn.Parameter(t))
        else:
            m.register_buffer(f"b{i}", t)
    m.register_buffer("counter", torch.tensor(7, dtype=torch.int64))
    return m


@given(st.lists(entry, min_size=1, max_size=6), st.integers(0, 2**31))
def test_unflatten_flatten_is_bitwise_exact(entries, seed):
    m = _module(entries, seed)
    layout = ParamLayout.from_module(m)
    state = m.state_dict()
    back = layout.unflatten(layout.flatten(state))
    assert set(back) == {n for n in state if n != "counter"}
    for name, t in back.items():
        assert t.dtype == state[name].dtype and t.shape == state[name].shape
        assert torch.equal(t.view(-1).view(torch.uint8) if t.numel() else t,
                           state[name].reshape(-1).view(torch.uint8) if t.numel() else state[name])
    expected = torch.float64 if any(d == torch.float64 for d, _, _ in entries) else torch.float32
    assert layout.dtype == expected
    assert layout.dim == sum(t.numel() for t in back.values())


@given(st.lists(entry, min_size=1, max_size=6), st.integers(0, 2**31))
def test_parameters_come_first_and_frozen_policy_drops_buffers(entries, seed):
    m = _module(entries, seed)
    layout = ParamLayout.from_module(m, buffers="aggregate")
    kinds = [s.kind for s in layout.specs]
    assert kinds == sorted(kinds, key=lambda k: k != "parameter")
    assert layout.num_parameters == sum(p.numel() for p in m.parameters())
    frozen = ParamLayout.from_module(m, buffers="frozen")
    assert all(s.kind == "parameter" for s in frozen.specs)
    assert frozen.dim == layout.num_parameters


def test_batchnorm_counter_is_never_federated():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    names = ParamLayout.from_module(m).names
    assert names == ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var")


def test_layout_round_trips_through_dict():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    layout = ParamLayout.from_module(m)
    assert ParamLayout.from_dict(layout.to_dict()) == layout


def test_flatten_rejects_wrong_state_with_the_entry_name():
    m = nn.Linear(3, 2)
    layout = ParamLayout.from_module(m)
    state = dict(m.state_dict())
    with pytest.raises(UpdateError, match="weight: expected shape \\(2, 3\\) float32, got \\(3, 2\\)"):
        layout.flatten({**state, "weight": torch.zeros(3, 2)})
    with pytest.raises(UpdateError, match="missing entry 'bias'"):
        layout.flatten({"weight": state["weight"]})
    with pytest.raises(UpdateError, match="expected length 8, got 7"):
        layout.unflatten(torch.zeros(7))


def test_integer_parameters_are_refused():
    m = nn.Module()
    m.register_parameter("w", nn.Parameter(torch.zeros(2, dtype=torch.complex64)))
    with pytest.raises(UpdateError, match="w: dtype complex64 cannot be federated"):
        ParamLayout.from_module(m)
