"""Conformance checks: run hypothesis properties against a user's aggregator, secure-sum
implementation or message codec, with defaults sized for a unit test.

Each check returns ``None`` when every property holds and raises :class:`AssertionError` otherwise,
with a message naming the broken property; hypothesis attaches the shrunk counterexample (the
"Falsifying example" note, printed by pytest under the traceback).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.aggregation.base import Aggregate, Aggregator, UpdateBatch
from secagg.errors import AbortError, SecAggError, WireError
from secagg.protocol.messages import SessionParams, Stage
from secagg.testing.strategies import (
    attacker_placements,
    client_populations,
    dropout_schedules,
    hostile_bytes,
    update_batches,
    update_stacks,
)

__all__ = ["check_aggregator", "check_message_codec", "check_secure_sum"]

Breakdown = Literal["hull", "member"] | bool
Reference = Callable[[UpdateBatch], torch.Tensor]
SecureSumFn = Callable[[SessionParams, dict[int, np.ndarray], dict[int, Stage]], np.ndarray]

# Relative tolerance per dtype, scaled by the largest honest |value| (plus 1).
_RTOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def _settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None, report_multiple_bugs=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _tolerance(dtype: torch.dtype, scale: float, rtol: float | None) -> float:
    r = _RTOL.get(dtype, 1e-5) if rtol is None else rtol
    return r * (1.0 + scale)


def _call(rule: Aggregator, batch: UpdateBatch) -> Aggregate:
    """Aggregate ``batch`` with a fresh state; check the output's type, shape, dtype and finiteness,
    and that neither the batch nor the state was modified."""
    state = rule.init_state(batch.dim)
    before = (batch.updates.clone(), batch.weights.clone(), {k: v.clone() for k, v in state.items()})
    out = rule.aggregate(batch, state)
    name = f"{rule!r}"
    if not torch.equal(batch.updates, before[0]):
        changed = int((batch.updates != before[0]).sum())
        raise AssertionError(f"{name} mutated its input: {changed} entries of batch.updates changed "
                             f"during aggregate() (aggregators must never modify the batch)")
    if not torch.equal(batch.weights, before[1]):
        raise AssertionError(f"{name} mutated its input: batch.weights changed during aggregate()")
    for k, v in before[2].items():
        if k not in state or not torch.equal(state[k], v):
            raise AssertionError(f"{name} mutated its input state: state[{k!r}] changed during aggregate() "
                                 f"(return a new state instead)")
    if not isinstance(out, Aggregate):
        raise AssertionError(f"{name}.aggregate returned {type(out).__name__}, expected an Aggregate")
    u = out.update
    if not isinstance(u, torch.Tensor) or tuple(u.shape) != (batch.dim,):
        shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise AssertionError(f"{name}: output shape {shape}, expected ({batch.dim},)")
    if u.dtype != batch.updates.dtype:
        raise AssertionError(f"{name}: output dtype {u.dtype}, expected the input dtype "
                             f"{batch.updates.dtype}")
    if not bool(torch.isfinite(u).all()):
        raise AssertionError(f"{name}: non-finite output {u.tolist()} for finite input")
    return out


def _permuted(batch: UpdateBatch, perm: Sequence[int]) -> UpdateBatch:
    idx = torch.tensor(list(perm), dtype=torch.long)
    return batch.replace(updates=batch.updates[idx].clone(), weights=batch.weights[idx].clone(),
                         client_ids=tuple(batch.client_ids[i] for i in perm))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def check_aggregator(rule: Aggregator, *, f: int = 0, breakdown: Breakdown = True,
                     reference: Reference | None = None, min_clients: int | None = None,
                     max_clients: int = 8, max_dim: int = 5, magnitude: float = 1e3,
                     dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
                     permutation: bool = True, permutation_min_clients: int | None = None,
                     breakdown_min_clients: int | None = None,
                     rtol: float | None = None, reference_atol: float = 0.0,
                     max_examples: int = 40) -> None:
    """Check an :class:`~secagg.aggregation.base.Aggregator` against the interface's contract.

    Properties, each on batches of ``1..max_clients`` clients (at least ``min_clients``) and
    ``1..max_dim`` coordinates, in each of ``dtypes``:

    * conformance: returns an :class:`Aggregate` whose update has shape ``(d,)``, the input dtype and
      finite values; never modifies ``batch.updates``, ``batch.weights`` or the state;
    * permutation invariance (``permutation=True``): permuting the rows together with their weights
      and client ids changes the output by at most ``rtol * (1 + max |u|)``. Turn it off for rules
      whose output depends on the row order by design (e.g. seeded bucketing), or check it only on
      batches of at least ``permutation_min_clients`` rows (rules with systematic ties at small n:
      Krum with one neighbour scores mutual nearest neighbours equally and breaks ties by row);
    * known answer (``reference``): ``reference(batch)`` (a trusted implementation, e.g. in numpy)
      equals the output within ``reference_atol + rtol * (1 + max |u|)``;
    * typed errors: on edge inputs (tied values, outliers, zero example counts, too few clients) the
      rule either returns a conforming output or raises a :class:`~secagg.errors.SecAggError`
      subclass, never another exception. With ``min_clients`` set, batches of fewer clients must be
      rejected with a ``SecAggError`` and batches of at least that many must be accepted;
    * breakdown (``breakdown``, ``True`` meaning ``"hull"``): ``f`` attackers at arbitrary rows, placed
      arbitrarily far away (colluding on one point or scattered), among at least
      ``breakdown_min_clients`` clients (default ``max(min_clients, 2f + 3)``). ``"hull"``: every output
      coordinate stays within the honest rows' range for that coordinate; ``"member"`` (rules that
      return one input row): the output equals an honest row. ``False`` skips it (non-robust rules).

    ``rtol``: relative tolerance (default 1e-5 for float32, 1e-9 for float64); ``magnitude``: the
    range of honest values; ``max_examples``: hypothesis examples per property.
    """
    if breakdown is True:
        breakdown = "hull"
    if breakdown not in ("hull", "member", False):
        raise ValueError(f"breakdown: must be 'hull', 'member', True or False, got {breakdown!r}")
    if f < 0:
        raise ValueError(f"f: must be >= 0, got {f}")
    lowest = max(1, min_clients or 1)
    if lowest > max_clients:
        raise ValueError(f"max_clients={max_clients} is below min_clients={lowest}")
    name = f"{rule!r}"
    dtype_st = st.sampled_from(list(dtypes))
    seen = {"accepted": 0, "tried": 0}

    def accepted(batch: UpdateBatch) -> Aggregate | None:
        """The rule's output, or ``None`` if it rejected the batch with a SecAggError it may raise."""
        try:
            return _call(rule, batch)
        except SecAggError as exc:
            if min_clients is not None and batch.num_clients >= min_clients:
                raise AssertionError(f"{name} rejected a valid batch of {batch.num_clients} clients "
                                     f"(min_clients={min_clients}): {_describe(exc)}") from exc
            return None

    # -- conformance, permutation invariance, known answer ------------------------------------------
    @_settings(max_examples)
    @given(data=st.data(), dtype=dtype_st)
    def conformance(data: st.DataObject, dtype: torch.dtype) -> None:
        batch = data.draw(update_batches(min_clients=lowest, max_clients=max_clients, max_dim=max_dim,
                                         dtype=dtype, magnitude=magnitude), label="batch")
        seen["tried"] += 1
        out = accepted(batch)
        if out is None:
            return
        seen["accepted"] += 1
        scale = float(batch.updates.abs().max())
        tol = _tolerance(dtype, scale, rtol)
        if permutation and batch.num_clients >= (permutation_min_clients or 1):
            perm = data.draw(st.permutations(range(batch.num_clients)), label="permutation")
            again = _call(rule, _permuted(batch, perm))
            diff = _max_diff(out.update, again.update)
            if diff > tol:
                raise AssertionError(
                    f"{name} is not permutation invariant: permuting the rows (with their weights and "
                    f"ids) by {list(perm)} changed the output by {diff:.6g} > tolerance {tol:.3g}\n"
                    f"  original: {out.update.tolist()}\n  permuted: {again.update.tolist()}")
        if reference is not None:
            want = torch.as_tensor(reference(batch))
            diff = _max_diff(out.update, want)
            if diff > reference_atol + tol:
                raise AssertionError(
                    f"{name} disagrees with the reference by {diff:.6g} > tolerance "
                    f"{reference_atol + tol:.3g}\n  output:    {out.update.tolist()}\n"
                    f"  reference: {want.tolist()}")

    # -- edge inputs: conforming output or a typed error ----------------------------------------------
    @_settings(max_examples)
    @given(data=st.data(), dtype=dtype_st, kind=st.sampled_from(["ties", "outliers", "zero-weights",
                                                                  "too-few"]))
    def typed_errors(data: st.DataObject, dtype: torch.dtype, kind: str) -> None:
        if kind == "too-few":
            if min_clients is None or min_clients <= 1:
                return
            lo, hi = 1, min_clients - 1
        else:
            lo, hi = 1, max_clients
        batch = data.draw(update_batches(min_clients=lo, max_clients=hi, max_dim=max_dim, dtype=dtype,
                                         magnitude=magnitude, ties=kind == "ties",
                                         outliers=kind == "outliers",
                                         allow_zero_examples=kind == "zero-weights"), label="batch")
        try:
            _call(rule, batch)
        except SecAggError:
            return
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(f"{name} raised {_describe(exc)} on a {kind} batch of "
                                 f"{batch.num_clients} clients; expected a conforming output or a "
                                 f"SecAggError subclass") from exc
        if kind == "too-few":
            raise AssertionError(f"{name} accepted {batch.num_clients} clients although min_clients="
                                 f"{min_clients}: it must raise a SecAggError (e.g. UpdateError) instead")

    # -- breakdown: f far-away attackers ------------------------------------------------------------
    b_lo = breakdown_min_clients if breakdown_min_clients is not None else max(lowest, 2 * f + 3)
    b_hi = max(max_clients, b_lo)

    @_settings(max_examples)
    @given(data=st.data(), dtype=dtype_st, distance=st.sampled_from([1e2, 1e4, 1e6]),
           collude=st.booleans())
    def robust(data: st.DataObject, dtype: torch.dtype, distance: float, collude: bool) -> None:
        honest_stack = data.draw(update_stacks(min_clients=b_lo, max_clients=b_hi, max_dim=max_dim,
                                               dtype=torch.float64, magnitude=magnitude), label="updates")
        n, d = honest_stack.shape
        bad = data.draw(attacker_placements(n, f), label="attackers")
        far = float(distance * (magnitude + float(honest_stack.abs().max())))
        signs = data.draw(st.lists(st.lists(st.sampled_from([1.0, -1.0]), min_size=d, max_size=d),
                                   min_size=max(f, 1), max_size=max(f, 1)), label="directions")
        stack = honest_stack.clone()
        for k, i in enumerate(sorted(bad)):
            s = torch.tensor(signs[0 if collude else k], dtype=torch.float64)
            stack[i] = s * far * (1.0 if collude else 1.0 + 0.1 * k)
        stack = stack.to(dtype)
        ids, counts = data.draw(client_populations(min_clients=n, max_clients=n), label="population")
        batch = UpdateBatch(stack, torch.tensor(counts, dtype=torch.float64), ids)
        out = accepted(batch)
        if out is None:
            return
        honest = stack[[i for i in range(n) if i not in bad]].double()
        y = out.update.double()
        tol = _tolerance(dtype, float(honest.abs().max()), rtol)
        if breakdown == "hull":
            lo, hi = honest.min(dim=0).values, honest.max(dim=0).values
            excess = torch.maximum(lo - y, y - hi).clamp(min=0)
            if float(excess.max()) > tol:
                j = int(excess.argmax())
                raise AssertionError(
                    f"{name} broke down with f={f} attacker(s) at rows {sorted(bad)} of {n}: output "
                    f"coordinate {j} = {float(y[j]):.6g} is outside the honest range "
                    f"[{float(lo[j]):.6g}, {float(hi[j]):.6g}] by {float(excess[j]):.6g}")
        else:
            gaps = (honest - y).abs().max(dim=1).values
            if float(gaps.min()) > tol:
                raise AssertionError(
                    f"{name} broke down with f={f} attacker(s) at rows {sorted(bad)} of {n}: the output "
                    f"is no honest row (nearest honest row differs by {float(gaps.min()):.6g})")

    conformance()
    if seen["tried"] and not seen["accepted"]:
        raise AssertionError(f"{name} rejected all {seen['tried']} generated batches (up to {max_clients} "
                             f"clients): nothing was checked; raise max_clients or set min_clients")
    typed_errors()
    if breakdown:
        robust()


def _ring_sum(inputs: Mapping[int, np.ndarray], survivors: Sequence[int], bits: int, d: int) -> np.ndarray:
    total = np.zeros(d, dtype=np.uint64)
    for u in survivors:
        total = (total + inputs[u].astype(np.uint64)) & np.uint64((1 << bits) - 1)
    return total


def check_secure_sum(fn: SecureSumFn, *, min_clients: int = 2, max_clients: int = 8, max_dim: int = 4,
                     bits: Sequence[int] = (8, 16, 32), stages: Sequence[Stage] | None = None,
                     max_examples: int = 25) -> None:
    """Check something that claims to compute a secure sum under dropouts (full graph, semi-honest).

    ``fn(params, inputs, drop_before)`` gets :class:`SessionParams` (full graph: ``degree = n - 1``),
    each client's input (``vector_length`` uint32 words, each below ``2^bits``) and a dropout schedule
    (client ``u`` sends nothing from stage ``drop_before[u]`` on). It must return the sum, modulo
    ``2^bits``, of the inputs of the clients that sent their masked input (those not dropped before
    :attr:`Stage.MASKED_INPUT`) when at least ``threshold`` clients remain at every stage, and raise
    :class:`~secagg.errors.AbortError` when fewer remain, never another exception and never a wrong
    sum. ``stages``: the stages dropouts happen before (default: all).
    """

    @_settings(max_examples)
    @given(data=st.data(), respect=st.booleans(), b=st.sampled_from(list(bits)))
    def secure_sum(data: st.DataObject, respect: bool, b: int) -> None:
        ids, _ = data.draw(client_populations(min_clients=min_clients, max_clients=max_clients),
                           label="population")
        ids = tuple(sorted(ids))
        n = len(ids)
        d = data.draw(st.integers(1, max_dim), label="vector_length")
        t = data.draw(st.integers(1, n), label="threshold")
        params = SessionParams(round=data.draw(st.integers(0, 3), label="round"), model_version=b"kit",
                               client_ids=ids, threshold=t, degree=n - 1, vector_length=d, bits=b)
        inputs = {u: np.array(data.draw(st.lists(st.integers(0, (1 << b) - 1), min_size=d, max_size=d),
                                        label=f"input[{u}]"), dtype=np.uint32) for u in ids}
        schedule = data.draw(dropout_schedules(ids, t, respect_threshold=respect, stages=stages),
                             label="drop_before")
        originals = {u: v.copy() for u, v in inputs.items()}
        try:
            result = fn(params, inputs, dict(schedule))
        except AbortError as exc:
            if respect:
                raise AssertionError(f"secure sum aborted although at least t={t} of {n} clients remained at "
                                     f"every stage (drop_before={dict(schedule)}): {exc}") from exc
            return
        except Exception as exc:
            raise AssertionError(f"secure sum raised {_describe(exc)}; expected the sum or an AbortError "
                                 f"(drop_before={dict(schedule)}, t={t}, n={n})") from exc
        if any(not np.array_equal(inputs[u], originals[u]) for u in ids):
            raise AssertionError("secure sum mutated its inputs")
        if not respect:
            raise AssertionError(f"secure sum returned a result although fewer than t={t} of {n} clients "
                                 f"remained (drop_before={dict(schedule)}): it must raise AbortError")
        survivors = [u for u in ids if u not in schedule or schedule[u] > Stage.MASKED_INPUT]
        want = _ring_sum(inputs, survivors, b, d)
        got = np.asarray(result)
        if got.shape != (d,) or not np.array_equal(got.astype(np.uint64), want):
            raise AssertionError(f"secure sum is wrong: got {got.tolist()}, expected {want.tolist()} "
                                 f"(the sum mod 2^{b} of survivors {survivors})")

    secure_sum()


def check_message_codec(encode: Callable[[Any], bytes], decode: Callable[[bytes], Any],
                        messages: st.SearchStrategy[Any], *, error: type[BaseException] = WireError,
                        max_examples: int = 50, hostile_per_message: int = 4) -> None:
    """Check a message codec: ``decode(encode(m)) == m`` for every generated message, and hostile
    bytes derived from a valid encoding (:func:`~secagg.testing.strategies.hostile_bytes`:
    truncations, bit flips, wrong lengths, appended garbage) either decode or raise ``error``, never
    another exception type. ``hostile_per_message``: corruptions tried per generated message."""
    ename = error.__name__

    @_settings(max_examples)
    @given(data=st.data())
    def codec(data: st.DataObject) -> None:
        message = data.draw(messages, label="message")
        try:
            encoded = encode(message)
            back = decode(encoded)
        except Exception as exc:
            raise AssertionError(f"round trip failed for {type(message).__name__}: {_describe(exc)}") from exc
        if back != message:
            raise AssertionError(f"round trip changed the message:\n  sent:    {message!r}\n"
                                 f"  decoded: {back!r}")
        for k in range(hostile_per_message):
            bad = data.draw(hostile_bytes(encoded), label=f"hostile[{k}]")
            try:
                decode(bad)
            except error:
                continue
            except Exception as exc:
                raise AssertionError(
                    f"decode raised {_describe(exc)} on hostile bytes derived from a valid "
                    f"{type(message).__name__} ({len(bad)} of {len(encoded)} bytes); only {ename} "
                    f"or success is allowed") from exc

    codec()
