"""The privacy section of the benchmark: what an update or a released model leaks, per defence.

A grid file lists privacy cells as an array of tables::

    [[privacy]]
    attack = "dlg"              # dlg | inverting_gradients (reconstruction); loss_threshold | lira;
                                # imprint | imprint_inplace | trap_weights (malicious model)
    defence = "secure_sum"      # none | secure_sum (k clients summed) | dp (clip + noise) | dpsgd
    clients = 8                 # secure_sum: k; malicious model: clients in the round
    batch_size = 8              # malicious model: examples per client
    bins = 512                  # imprint: bins of the inserted imprint layer
    noise_multiplier = 0.1      # dp: z (noise std z * clip on the single-example gradient)
    clip = 1.0                  # dp: C
    epsilon = 4.0               # dpsgd: the record-level target epsilon of the trained model

Reconstruction cells attack single-example gradients of the digits MLP at its initial weights (what
an honest-but-curious server sees), the sum of k clients' gradients (what it sees under secure
aggregation), or a clipped and noised gradient (local DP; its epsilon is that of one Gaussian release
with sensitivity 2C). They report ``psnr`` and ``ssim`` of the best-matching true image (dB; 1 =
identical) and ``label_accuracy`` (the iDLG label is among the true labels). Membership cells train a
target MLP (plain, or DP-SGD at ``epsilon``) on half of a pool of digits and attack it with the loss
threshold (Yeom et al.) or LiRA online (Carlini et al., shadow models like the target); they report
``auc``, ``tpr_at_1pct_fpr`` and ``tpr_at_0_1pct_fpr``.

Every membership row's ``epsilon`` is record-level (a membership test asks about one record), with
``epsilon_record`` (the same number) and ``epsilon_relation`` naming the neighbouring relation it holds
for. DP-SGD cells: add/remove one record. DP-FedAvg cells (client-level DP) are accounted for one
record by :func:`record_level_epsilon` (removing a record replaces its client's update: noise
multiplier z/2), with records split to clients by :func:`client_of` so that no other record moves;
their client-level (add/remove one client) figure is ``epsilon_client``.

Malicious-model cells (:mod:`attacks.imprint`) send one imprint or trap-weights model to every client
of a FedSGD round (``clients`` x ``batch_size`` digits) and recover examples from the aggregate, under
``none`` (plain mean), ``secure_sum`` / ``secaggplus`` (``_malicious``: the malicious-server mode),
``dp_fedavg`` or ``distributed_dp`` (``noise_multiplier``; the clip is the norm of one public client
step, ``clip`` is not used: clipping cancels in the recovery). Their defence names carry the client
count (``secure_sum_8``, ``dp_fedavg_z1_8``). They report ``psnr_mean`` / ``psnr_median`` /
``psnr_max`` over the recovered images (best-matching true example, dB, capped at 150; ``psnr`` is
the mean), ``fraction_recovered`` (examples recovered at >= 20 dB), ``candidates``, ``examples`` and
``epsilon`` (DP: client-level, one round), and save the grid ``imprint_<attack>_<defence>_<seed>.png``
(true over recovered).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.image_metrics import ssim
from attacks.imprint import ATTACKS as IMPRINT_ATTACKS
from attacks.imprint import DEFENCES as IMPRINT_DEFENCES
from attacks.imprint import DP_DEFENCES as IMPRINT_DP_DEFENCES
from attacks.inversion import (
    best_match_psnr,
    clip_and_noise,
    dlg,
    idlg_label,
    inverting_gradients,
    last_weight_grad,
    single_example_gradient,
    summed_gradient,
)
from attacks.membership import (
    auc,
    balanced_in_mask,
    lira_scores,
    loss_threshold_scores,
    model_confidences,
    roc_curve,
    tpr_at_fpr,
    train_model,
)
from secagg.data.digits import load_digits_split
from secagg.errors import ConfigError
from secagg.fedavg.config import ClientConfig
from secagg.seeding import derive_seed, numpy_rng
from secagg.task import TaskConfig, build_task

RECONSTRUCTION = ("dlg", "inverting_gradients")
MEMBERSHIP = ("loss_threshold", "lira")
MALICIOUS_MODEL = IMPRINT_ATTACKS
DEFENCES = {"dlg": ("none", "secure_sum", "dp"), "inverting_gradients": ("none", "secure_sum", "dp"),
            "loss_threshold": ("none", "dpsgd", "dp_fedavg"), "lira": ("none", "dpsgd", "dp_fedavg"),
            **dict.fromkeys(IMPRINT_ATTACKS, IMPRINT_DEFENCES)}
KEYS = ("attack", "defence", "clients", "noise_multiplier", "clip", "epsilon", "examples", "shadows",
        "targets", "pool", "batch_size", "bins")
DELTA = 1e-5
MEMBERSHIP_TRAINING = ClientConfig(epochs=60, batch_size=0, lr=1.0, momentum=0.9)
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class PrivacyCell:
    attack: str
    defence: str = "none"
    clients: int = 1
    noise_multiplier: float = 0.0
    clip: float = 1.0
    epsilon: float | None = None
    examples: int = 4
    shadows: int = 8
    targets: int = 2
    pool: int = 600
    batch_size: int = 8
    bins: int = 512

    @property
    def defence_name(self) -> str:
        if self.attack in MALICIOUS_MODEL:  # the client count is part of what these cells compare
            z = f"_z{self.noise_multiplier:g}" if self.defence in IMPRINT_DP_DEFENCES else ""
            return f"{self.defence}{z}_{self.clients}"
        if self.defence == "secure_sum":
            return f"secure_sum_{self.clients}"
        if self.defence == "dp":
            return f"dp_z{self.noise_multiplier:g}"
        if self.defence == "dpsgd":
            return f"dpsgd_eps{self.epsilon:g}"
        if self.defence == "dp_fedavg":
            return f"dp_fedavg_z{self.noise_multiplier:g}"
        return "none"

    @property
    def key(self) -> str:
        return f"privacy|{self.attack}|{self.defence_name}"


def parse_cells(tables: Any) -> tuple[PrivacyCell, ...]:
    """Validated :class:`PrivacyCell` values from the ``[[privacy]]`` tables."""
    if not isinstance(tables, list):
        raise ConfigError("privacy: expected an array of tables ([[privacy]])")
    cells = []
    for i, table in enumerate(tables):
        where = f"privacy[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        unknown = sorted(set(table) - set(KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(KEYS)}")
        attack = table.get("attack")
        if attack not in DEFENCES:
            raise ConfigError(f"{where}.attack: {attack!r} is not one of {', '.join(DEFENCES)}")
        defence = table.get("defence", "none")
        if defence not in DEFENCES[attack]:
            raise ConfigError(f"{where}.defence: {defence!r} is not one of {', '.join(DEFENCES[attack])} "
                              f"for {attack}")
        cell = PrivacyCell(**table)
        _check(cell, where)
        cells.append(cell)
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ConfigError("privacy: two cells have the same attack and defence")
    return tuple(cells)


def _check(cell: PrivacyCell, where: str) -> None:
    def positive_int(name: str, value: Any, minimum: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{where}.{name}: expected an integer >= {minimum}, got {value!r}")

    positive_int("clients", cell.clients, 1)
    positive_int("examples", cell.examples, 1)
    positive_int("shadows", cell.shadows, 2)
    positive_int("targets", cell.targets, 1)
    positive_int("pool", cell.pool, 20)
    positive_int("batch_size", cell.batch_size, 1)
    positive_int("bins", cell.bins, 2)
    if cell.attack in MALICIOUS_MODEL:
        if cell.clients < 2:
            raise ConfigError(f"{where}.clients: {cell.attack} needs >= 2 clients in the round, got "
                              f"{cell.clients}")
        available = len(load_digits_split()[0])
        if cell.clients * cell.batch_size > available:
            raise ConfigError(f"{where}.batch_size: {cell.clients} clients x {cell.batch_size} examples "
                              f"exceed the {available} digits training examples")
    if cell.defence == "secure_sum" and cell.clients < 2:
        raise ConfigError(f"{where}.clients: secure_sum needs >= 2 clients, got {cell.clients}")
    z = cell.noise_multiplier
    if cell.defence in ("dp", "dp_fedavg", "distributed_dp") and not (isinstance(z, int | float) and z > 0):
        raise ConfigError(f"{where}.noise_multiplier: {cell.defence} needs a value > 0, got {z!r}")
    if not (isinstance(cell.clip, int | float) and cell.clip > 0):
        raise ConfigError(f"{where}.clip: must be > 0, got {cell.clip!r}")
    if cell.defence == "dpsgd" and not (isinstance(cell.epsilon, int | float) and cell.epsilon > 0):
        raise ConfigError(f"{where}.epsilon: dpsgd needs a target epsilon > 0, got {cell.epsilon!r}")
    if cell.defence == "dp_fedavg" and cell.pool < FL_MIN_POOL:
        # every model trains on about half the pool, split over FL_CLIENTS by hash: a smaller pool can
        # leave a client with no record, which the federated data set refuses
        raise ConfigError(f"{where}.pool: dp_fedavg needs a pool >= {FL_MIN_POOL}, got {cell.pool}")


def run_privacy_cell(cell: PrivacyCell, seed: int, out_dir: Path | None = None) -> dict[str, Any]:
    """One privacy cell's results row (``attack``, ``defence``, ``epsilon`` and the metrics). With
    ``out_dir``, a reconstruction cell also saves its image grid (true over reconstructed) there as
    ``reconstruction_<attack>_<defence>_<seed>.png``."""
    started = time.perf_counter()
    if cell.attack in RECONSTRUCTION:
        metrics = _reconstruction(cell, seed, out_dir)
    elif cell.attack in MALICIOUS_MODEL:
        metrics = _malicious_model(cell, seed, out_dir)
    else:
        metrics = _membership(cell, seed)
    return {"section": "privacy", "attack": cell.attack, "defence": cell.defence_name, "seed": seed,
            **metrics, "seconds": time.perf_counter() - started}


def _reconstruction(cell: PrivacyCell, seed: int, out_dir: Path | None) -> dict[str, Any]:
    from dp.accounting import local_gaussian_epsilon

    task = build_task(TaskConfig(num_clients=2, model="mlp"), seed=seed)
    model, x, y = task.model, task.data.train_x, task.data.train_y
    shape, classes = tuple(x.shape[1:]), task.data.num_classes
    k = cell.clients if cell.defence == "secure_sum" else 1
    psnrs, ssims, labels, pairs = [], [], [], []
    for e in range(cell.examples):
        rng = numpy_rng(seed, "privacy-examples", e)  # not secret: which examples are attacked
        idx = torch.from_numpy(rng.choice(len(x), size=k, replace=False))
        grads = (single_example_gradient(model, x[idx[0]], y[idx[0]]) if k == 1
                 else summed_gradient(model, x[idx], y[idx]))
        if cell.defence == "dp":
            grads = clip_and_noise(grads, clip=cell.clip, noise_multiplier=cell.noise_multiplier,
                                   seed=derive_seed(seed, "privacy-noise", e))
        try:
            label = idlg_label(last_weight_grad(model, grads))
        except ConfigError:  # noise can leave no negative row: the attacker guesses class 0
            label = 0
        if cell.attack == "dlg":
            recon = dlg(model, grads, shape, classes, label=label, seed=derive_seed(seed, "dlg", e))
        else:
            recon = inverting_gradients(model, grads, shape, label, seed=derive_seed(seed, "ig", e),
                                        num_classes=classes)
        truth = x[idx]
        per_truth = torch.stack([best_match_psnr(recon.x[:1], t[None])[0] for t in truth])
        best = int(torch.argmax(per_truth))
        psnrs.append(float(per_truth[best]))
        ssims.append(float(ssim(recon.x[:1], truth[best:best + 1])[0]))
        labels.append(float(label in y[idx].tolist()))
        pairs.append((truth[best], recon.x[0].detach()))
    if out_dir is not None:
        save_grid(pairs, Path(out_dir) / f"reconstruction_{cell.attack}_{cell.defence_name}_{seed}.png",
                  f"{cell.attack} vs {cell.defence_name}: true (top), reconstructed (bottom)")
    finite = [p for p in psnrs if math.isfinite(p)]
    return {"epsilon": (local_gaussian_epsilon(cell.noise_multiplier, 1, DELTA) if cell.defence == "dp"
                        else None),
            "psnr": float(np.median(finite)) if finite else math.inf, "ssim": float(np.median(ssims)),
            "label_accuracy": float(np.mean(labels))}


def _malicious_model(cell: PrivacyCell, seed: int, out_dir: Path | None) -> dict[str, Any]:
    """An imprint / trap-weights cell (:func:`attacks.imprint.run_attack`): its row's metrics, and the
    grid of the 8 best-recovered examples (true over recovered) in ``out_dir``."""
    from attacks.imprint import run_attack, save_comparison

    result = run_attack(cell.attack, cell.defence, clients=cell.clients, batch_size=cell.batch_size,
                        bins=cell.bins, noise_multiplier=cell.noise_multiplier, seed=seed)
    row = result.summary()
    if out_dir is not None:
        order = torch.argsort(result.truth_psnr, descending=True)[:8]
        save_comparison(Path(out_dir) / f"imprint_{cell.attack}_{cell.defence_name}_{seed}.png",
                        result.truth[order], [("recovered", result.recovered)],
                        f"{cell.attack} vs {cell.defence_name}: {result.fraction_recovered:.0%} of "
                        f"{len(result.truth)} examples at >= {result.threshold_db:g} dB")
    keep = ("examples", "candidates", "psnr_mean", "psnr_median", "psnr_max", "fraction_recovered",
            "threshold_db", "baseline_psnr", "pixel_error_bound", "clipped_fraction", "epsilon")
    return {"psnr": row["psnr_mean"], "clients": cell.clients, "batch_size": cell.batch_size,
            **{k: row.get(k) for k in keep}}


def save_grid(pairs: list[tuple[torch.Tensor, torch.Tensor]], path: Path, title: str) -> None:
    """A 2-row image grid: true images on top, their reconstructions below (grey, [0, 1])."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(pairs), figsize=(1.4 * len(pairs) + 0.4, 3.2), squeeze=False)
    for j, (truth, recon) in enumerate(pairs):
        for i, image in enumerate((truth, recon)):
            axes[i, j].imshow(image[0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_axis_off()
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _membership(cell: PrivacyCell, seed: int) -> dict[str, Any]:
    from dp import DPSGDTrainer, noise_multiplier_for

    task = build_task(TaskConfig(num_clients=2, model="mlp"), seed=seed)
    pool = numpy_rng(seed, "privacy-pool").permutation(len(task.data.train_x))[:cell.pool]  # not secret
    x, y = task.data.train_x[pool], task.data.train_y[pool]
    classes = task.data.num_classes
    trainer = None
    if cell.defence == "dpsgd":
        assert cell.epsilon is not None
        z = noise_multiplier_for(cell.epsilon, DELTA, 1.0, MEMBERSHIP_TRAINING.epochs, accountant="rdp")
        trainer = DPSGDTrainer(noise_multiplier=z, max_grad_norm=MAX_GRAD_NORM, delta=DELTA, batch_size=0,
                               epochs=MEMBERSHIP_TRAINING.epochs)
    n = len(x)
    shadow_mask = balanced_in_mask(cell.shadows, n, seed=derive_seed(seed, "privacy-shadows"))
    target_mask = np.zeros((cell.targets, n), dtype=bool)
    for t in range(cell.targets):  # targets independent of the shadows' split (see lira_scores)
        target_mask[t, numpy_rng(seed, "privacy-target", t).permutation(n)[: n // 2]] = True  # not secret
    mask = np.concatenate([shadow_mask, target_mask])
    confs, losses, epsilons, client_epsilons = [], [], [], []
    for m in range(len(mask)):
        records = np.flatnonzero(mask[m])  # pool indices: a record's identity, whatever else is in
        idx = torch.from_numpy(records)
        model_seed = derive_seed(seed, "privacy-model", m)
        if cell.defence == "dp_fedavg":
            # one split key per cell: a record belongs to the same client in every shadow and target
            model, client_eps, epsilon = _train_dp_fedavg(x[idx], y[idx], records, classes, cell, model_seed,
                                                          split_key=derive_seed(seed, "privacy-fl-split"))
            client_epsilons.append(client_eps)
        else:
            trained = train_model("mlp", x[idx], y[idx], num_classes=classes, config=MEMBERSHIP_TRAINING,
                                  trainer=trainer, seed=model_seed)
            model, epsilon = trained.model, trained.epsilon
        confs.append(model_confidences(model, x, y))
        losses.append(loss_threshold_scores(model, x, y))
        epsilons.append(epsilon)
    conf = np.stack(confs)
    shadows = cell.shadows
    if cell.attack == "lira":
        scores = np.concatenate([lira_scores(conf[t], conf[:shadows], shadow_mask, online=True)
                                 for t in range(shadows, len(mask))])
    else:
        scores = np.concatenate(losses[shadows:])
    member = target_mask.reshape(-1)
    eps = max(epsilons)
    record_eps = None if math.isinf(eps) else eps
    return {"epsilon": record_eps, "epsilon_record": record_eps, "epsilon_relation": RELATIONS[cell.defence],
            "epsilon_client": max(client_epsilons) if client_epsilons else None,
            "auc": auc(scores, member), "tpr_at_1pct_fpr": tpr_at_fpr(scores, member, 0.01),
            "tpr_at_0_1pct_fpr": tpr_at_fpr(scores, member, 0.001), "delta": DELTA,
            **roc_points(scores, member)}


def roc_points(scores: np.ndarray, member: np.ndarray, points: int = 60) -> dict[str, list[float]]:
    """The attack's ROC curve, thinned for the results file: at most ``points`` + 2 points, spaced
    evenly in log FPR from ``1 / #non-members`` to 1 (the low-FPR end is what a log-log plot shows),
    each the largest TPR at an FPR <= that value. ``{"roc_fpr": [...], "roc_tpr": [...]}``."""
    fpr, tpr, _ = roc_curve(scores, member)
    negatives = max(int((~np.asarray(member, dtype=bool)).sum()), 1)
    grid = np.unique(np.concatenate([[0.0], np.logspace(np.log10(1.0 / negatives), 0.0, points)]))
    best = [float(tpr[fpr <= g + 1e-12].max()) for g in grid]
    return {"roc_fpr": [float(g) for g in grid], "roc_tpr": best}


#: The neighbouring relation each membership row's record-level ``epsilon`` holds for.
RELATIONS = {"none": None, "dpsgd": "add/remove one record (DP-SGD)",
             "dp_fedavg": "add/remove one record = replace one client's update (L2 2C: DP-FedAvg at z/2)"}
FL_CLIENTS, FL_ROUNDS = 5, 20
FL_MIN_POOL = 200
FL_TRAINING = ClientConfig(epochs=5, batch_size=0, lr=0.5, momentum=0.0)


def client_of(record: int, key: int, num_clients: int) -> int:
    """The client (in ``[0, num_clients)``) holding pool record ``record``: ``sha256(key, record)`` mod
    ``num_clients``. A function of the record's own index alone, so adding or removing a record moves
    no other record (a ``permutation(len(x))`` split reshuffles every client when one record joins).
    ``key`` is a public simulation seed (not secret: it only has to be fixed before the data)."""
    digest = hashlib.sha256(f"secagg/privacy-fl-split/{key}/{record}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % num_clients  # modulo bias < 2^-60


def split_records(records: np.ndarray, key: int, num_clients: int) -> tuple[np.ndarray, ...]:
    """Per client, the positions in ``records`` (pool indices) that :func:`client_of` assigns to it."""
    owner = np.array([client_of(int(r), key, num_clients) for r in records], dtype=np.int64)
    return tuple(np.flatnonzero(owner == c) for c in range(num_clients))


def record_level_epsilon(noise_multiplier: float, rounds: int, delta: float, *, accountant: str = "rdp",
                         sampling: str = "none") -> float:
    """Record-level epsilon (nats, add/remove one record) of ``rounds`` DP-FedAvg rounds in which every
    client takes part, records being split by :func:`client_of`.

    Derivation: with that split, adding or removing one record changes the data of exactly one client
    (the client set, the client ids and their training seeds stay the same), so exactly one clipped
    update changes, from ``u`` to ``u'`` with ``||u - u'|| <= 2C``: a *replacement* of one client, not
    the add/remove-one-client relation of :class:`~dp.accounting.GaussianAccountant`. Noise of std
    ``zC`` against L2 sensitivity ``2C`` is the Gaussian mechanism at noise multiplier ``z / 2``;
    rounds compose adaptively. Hence ``GaussianAccountant(z / 2, 1.0, accountant, "none")``. (Group
    privacy over the two add/remove steps of a replacement gives a looser bound.) Poisson client
    sampling is refused: the add/remove subsampled-Gaussian analysis at ``z / 2`` is not a
    replace-one analysis, and the benchmark does not sample clients.
    """
    from dp.accounting import GaussianAccountant

    if sampling != "none":
        raise ConfigError(f"sampling: record-level accounting of DP-FedAvg supports only 'none' (every "
                          f"client every round), got {sampling!r}")
    return GaussianAccountant(noise_multiplier / 2, 1.0, accountant, "none").epsilon(rounds, delta)


def _train_dp_fedavg(x: torch.Tensor, y: torch.Tensor, records: np.ndarray, classes: int, cell: PrivacyCell,
                     seed: int, *, split_key: int) -> tuple[torch.nn.Module, float, float]:
    """An MLP trained by FedAvg with client-level DP (DP-FedAvg, ``cell.noise_multiplier`` and
    ``cell.clip``) among ``FL_CLIENTS`` clients, row ``i`` of ``(x, y)`` (pool record ``records[i]``)
    going to ``client_of(records[i], split_key)``, every client in each of ``FL_ROUNDS`` rounds (no
    amplification). Returns the model, its client-level epsilon (add/remove one client) and its
    record-level epsilon (:func:`record_level_epsilon`), both at ``DELTA``. Raises
    :class:`ConfigError` if a client gets no record (the pool is too small)."""
    from dp import DPFedAvg
    from secagg.data.federated import FederatedDataset
    from secagg.fedavg import FedAvg, FedAvgConfig
    from secagg.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "privacy-fl-init"))
        model = build_model("mlp", tuple(x.shape[1:]), classes)
    partition = split_records(records, split_key, FL_CLIENTS)
    empty = [c for c, part in enumerate(partition) if part.size == 0]
    if empty:
        raise ConfigError(f"pool: dp_fedavg needs >= 1 record per client, client {empty[0]} got none of "
                          f"{len(records)}: use a larger pool")
    data = FederatedDataset(x, y, x[:1], y[:1], partition, classes)
    aggregator = DPFedAvg(clip=cell.clip, noise_multiplier=cell.noise_multiplier,
                          expected_clients=float(FL_CLIENTS), sample_rate=1.0, sampling="none", delta=DELTA,
                          simulation_seed=seed)  # a benchmark: reproducible noise (see DPFedAvg)
    fedavg = FedAvg(FedAvgConfig(rounds=FL_ROUNDS, fraction=1.0, client=FL_TRAINING, aggregator=aggregator),
                    model, data, seed=seed)
    state = fedavg.initial_state()
    for _ in range(FL_ROUNDS):
        state = fedavg.run_round(state).state
    model.load_state_dict(state.model)
    model.train(False)
    client_epsilon = aggregator.epsilon_after(FL_ROUNDS, fedavg.layout.dim)
    assert client_epsilon is not None
    record_epsilon = record_level_epsilon(cell.noise_multiplier, FL_ROUNDS, DELTA,
                                          accountant=aggregator.accountant, sampling=aggregator.sampling)
    return model, client_epsilon, record_epsilon
