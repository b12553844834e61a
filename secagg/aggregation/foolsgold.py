"""FoolsGold (Fung, Yoon and Beschastnikh, RAID 2020, "The Limitations of Federated Learning in Sybil
Settings").

Sybils that push one poisoning objective send similar updates round after round, while honest
clients, with their different data, do not. FoolsGold therefore keeps, per client, the sum of all
its past updates (its *history* ``H_i``) and down-weights clients whose histories are too similar to
someone else's. Each round (the paper's Algorithm 1):

1. ``H_i += u_i`` for every client in the round (a client never seen before starts at zero).
2. ``cs_ij = cos(H_i, H_j)`` for ``i != j`` (0 on the diagonal); ``v_i = max_j cs_ij``.
3. Pardoning: if ``v_i < v_j``, ``cs_ij *= v_i / v_j`` (an honest client that merely resembles a
   sybil is not punished as much as the sybil).
4. ``alpha_i = 1 - max_j cs_ij``, clipped to [0, 1], divided by its maximum; 1 becomes 0.99.
5. Logit with confidence ``kappa``: ``alpha_i = kappa (ln(alpha_i / (1 - alpha_i)) + 0.5)``,
   clipped to [0, 1] (``alpha_i = 0`` stays 0).
6. The aggregate is the ``alpha``-weighted mean of this round's updates.

State: one history per client id, under the key ``"history/<id>"`` of the explicit state dict; only
clients that ever took part have a key. Memory: O(num_clients_seen x d) floats (400 MB for 100
clients of 10^6 float32 coordinates); a round allocates the new histories of its n clients (the
input state is never modified) and, while it computes their similarities, one (n, d) stack of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.aggregation.similarity import cosine_similarities, stack_rows
from secagg.errors import ConfigError, UpdateError
from secagg.layout import ParamLayout
from secagg.validation import check_int, check_real

HISTORY = "history/"
GLOBAL = "global"


def foolsgold_weights(cosine: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """(n,) float64 FoolsGold weights in [0, 1] from the (n, n) cosine similarities of the histories
    (steps 2-5 of the module docstring; the diagonal of ``cosine`` is ignored).

    As in the authors' code the similarity of a client with itself counts as 0 in the maxima (the
    ``cs - I`` of their code), so ``v_i >= 0``, and a pardon (``v_i < v_j``) never divides by zero.
    When every ``1 - max cs`` is 0 (all histories identical), every weight is 0.
    """
    n = int(cosine.shape[0])
    cs = cosine.to(torch.float64).clone()
    cs.fill_diagonal_(0.0)
    v = cs.max(dim=1).values
    vi, vj = v[:, None], v[None, :]
    # v >= 0, so v_i < v_j implies v_j > 0: the clamp only keeps the unused entries finite
    cs = torch.where(vi < vj, cs * (vi / vj.clamp_min(torch.finfo(torch.float64).tiny)), cs)
    alpha = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    top = float(alpha.max())
    if top <= 0.0:
        return torch.zeros(n, dtype=torch.float64)
    alpha = alpha / top
    alpha = torch.where(alpha >= 1.0, 0.99, alpha)
    positive = alpha > 0
    logit = kappa * (torch.log(alpha.clamp_min(1e-300) / (1.0 - alpha)) + 0.5)
    return torch.where(positive, logit, 0.0).clamp(0.0, 1.0)


def output_layer_rows(layout: ParamLayout | None, dim: int) -> tuple[int, int, int]:
    """``(offset, rows, width)`` of the output layer inside a flat update: the last trainable
    parameter with at least 2 dimensions (its rows are the classes), or the whole vector as one row
    when there is no layout or no such parameter."""
    if layout is not None:
        for spec in reversed(layout.specs):
            if spec.kind == "parameter" and len(spec.shape) >= 2 and spec.numel > 0:
                return spec.offset, spec.shape[0], spec.numel // spec.shape[0]
    return 0, 1, dim


def indicative_features(model_delta: torch.Tensor, layout: ParamLayout | None,
                        fraction: float) -> torch.Tensor:
    """(k,) int64 coordinates of the *indicative features*: in each row (class) of the output layer
    (:func:`output_layer_rows`), the ``ceil(fraction * width)`` coordinates of largest ``|model_delta|``;
    a row that is still all zero (the first round) contributes all its coordinates."""
    offset, rows, width = output_layer_rows(layout, int(model_delta.shape[0]))
    block = model_delta.detach()[offset:offset + rows * width].reshape(rows, width).abs()
    k = max(1, math.ceil(fraction * width))
    top = block.topk(k, dim=1, sorted=False).indices
    base = torch.arange(rows, dtype=torch.int64)[:, None] * width
    chosen = [(top[r] + base[r]) if bool(block[r].any()) else torch.arange(width) + base[r]
              for r in range(rows)]
    return torch.cat(chosen).sort().values + offset


@dataclass(frozen=True)
class FoolsGold(Aggregator, kind="foolsgold"):
    """FoolsGold: weight this round's updates by how *dissimilar* each client's update history is.

    ``kappa`` (> 0, default 1, the paper's confidence): the logit's slope. ``max_clients`` (>= 1 or
    None, unbounded): refuse (:class:`UpdateError` naming ``max_clients``) a round after which the
    state would hold more histories than this: a cap on the state's memory.

    Differences between references, as parameters:

    * ``normalize`` (default True): the aggregate is ``sum_i alpha_i u_i / sum_i alpha_i`` (a
      weighted mean, so the step does not grow with the number of clients; zero when every weight
      is 0, logged as ``zero_weight``). ``False``: ``sum_i alpha_i u_i``, the authors' code and
      FLPoison (whose server learning rate absorbs the scale).
    * ``history_norm`` (> 0 or None, default None as in the authors' code): scale each update to L2
      norm at most this before adding it to the history; FLPoison uses 1.0 (and also aggregates the
      scaled updates; here the aggregate always uses the updates as sent).
    * ``important_features`` (default False) with ``topk_fraction`` (in (0, 1], default 0.1 as in
      FLPoison): the paper's *indicative features*. Similarities are computed on the output layer's
      most important coordinates only: per class row, the ``topk_fraction`` of coordinates of
      largest magnitude in the global model. The rule does not see the global model, so it keeps
      its own estimate in the state, ``"global"``: the running sum of its aggregates (the model's
      change since the first round when this rule is the whole server step at learning rate 1). The
      paper and FLPoison rank the global model's own weights.

    Handles changing client sets: a client's history is read and written by its id
    (``"history/<id>"``), clients not in the round keep theirs unchanged, new clients start at zero.
    Ids must be distinct within a round. Logs ``weight_min``, ``weight_mean``, ``zero_weight_count``,
    ``zero_weight`` and ``clients_tracked``.
    """

    kappa: float = 1.0
    normalize: bool = True
    history_norm: float | None = None
    important_features: bool = False
    topk_fraction: float = 0.1
    max_clients: int | None = None

    def __post_init__(self) -> None:
        check_real("kappa", self.kappa, gt=0.0)
        for name in ("normalize", "important_features"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        if self.history_norm is not None:
            check_real("history_norm", self.history_norm, gt=0.0)
        check_real("topk_fraction", self.topk_fraction, gt=0.0, le=1.0)
        if self.max_clients is not None:
            check_int("max_clients", self.max_clients, minimum=1)

    def init_state(self, dim: int) -> AggState:
        """No history yet (clients are added as they take part); with ``important_features`` the
        global-model estimate ``"global"``, zeros of length ``dim``."""
        check_int("dim", dim, minimum=1)
        return {GLOBAL: torch.zeros(dim, dtype=torch.float32)} if self.important_features else {}

    def _history(self, state: Mapping[str, torch.Tensor], client: int, dim: int) -> torch.Tensor | None:
        h = state.get(f"{HISTORY}{client}")
        if h is None:
            return None
        if not isinstance(h, torch.Tensor) or tuple(h.shape) != (dim,):
            shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise UpdateError(f"state.{HISTORY}{client}: expected shape ({dim},), got {shape}")
        return h

    def client_weights(self, batch: UpdateBatch, state: AggState
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(alpha, histories)``: the (n,) float64 FoolsGold weights of this round's clients, in row
        order, and their updated histories (``"history/<id>"`` -> (d,) tensor, fresh tensors). Neither
        ``batch`` nor ``state`` is modified."""
        u = batch.updates.detach()
        n, d = batch.num_clients, batch.dim
        ids = batch.client_ids
        if len(set(ids)) != n:
            dup = sorted({c for c in ids if ids.count(c) > 1})
            raise UpdateError(f"client_ids: FoolsGold keeps one history per client; id(s) {dup} "
                              f"appear more than once in the round")
        tracked = {k for k in state if k.startswith(HISTORY)} | {f"{HISTORY}{c}" for c in ids}
        if self.max_clients is not None and len(tracked) > self.max_clients:
            raise UpdateError(f"max_clients: the state would hold {len(tracked)} client histories "
                              f"after this round, above max_clients={self.max_clients}")
        step = u
        if self.history_norm is not None:
            norms = torch.linalg.vector_norm(u, dim=1)
            scale = torch.clamp(self.history_norm / norms.clamp_min(torch.finfo(norms.dtype).tiny), max=1.0)
            step = u * scale[:, None]
        # one fresh tensor per client (not rows of one stack): a row view would keep the whole
        # round's stack alive for as long as any one of its clients' histories is not replaced
        histories = []
        for i, c in enumerate(ids):  # a dict lookup per client id; each add is a batched d-vector op
            prev = self._history(state, c, d)
            histories.append(step[i].clone() if prev is None else prev.to(u.dtype) + step[i])
        if self.important_features:
            cols = indicative_features(self._model_delta(state, d), batch.layout, self.topk_fraction)
            cosine = cosine_similarities(torch.stack([h.index_select(0, cols) for h in histories]))
        else:
            stack = stack_rows(histories)
            cosine = cosine_similarities(stack)
            del stack
        alpha = foolsgold_weights(cosine, self.kappa)
        return alpha, {f"{HISTORY}{c}": h for c, h in zip(ids, histories, strict=True)}

    def _model_delta(self, state: Mapping[str, torch.Tensor], dim: int) -> torch.Tensor:
        delta = state.get(GLOBAL)
        if not isinstance(delta, torch.Tensor) or tuple(delta.shape) != (dim,):
            raise UpdateError(f"state.{GLOBAL}: FoolsGold with important_features needs the "
                              f"global-model estimate of shape ({dim},) (use init_state(dim))")
        return delta

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        u = batch.updates.detach()
        alpha, histories = self.client_weights(batch, state)
        total = float(alpha.sum())
        coef = alpha
        if self.normalize:
            coef = alpha / total if total > 0 else torch.zeros_like(alpha)
        update = coef.to(u.dtype) @ u
        new_state = {**state, **histories}
        if self.important_features:
            new_state[GLOBAL] = self._model_delta(state, batch.dim).to(update.dtype) + update
        tracked = sum(1 for k in new_state if k.startswith(HISTORY))
        metrics = {"weight_min": float(alpha.min()), "weight_mean": float(alpha.mean()),
                   "zero_weight_count": float((alpha == 0).sum()), "zero_weight": float(total <= 0),
                   "clients_tracked": float(tracked)}
        return Aggregate(update=update, state=new_state, metrics=metrics)
