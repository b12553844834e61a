"""The benchmark grid, read from a TOML file: attacks x defences x attacker fractions x partitions x seeds.

A file has four tables; every key is checked and an unknown key or value names itself and the
allowed ones::

    [run]                      # the FedAvg task every cell trains
    rounds = 10                # FedAvg rounds per cell
    clients = 20               # clients in the federation (all take part in every round)
    local_epochs = 1
    batch_size = 16
    lr = 0.1                   # client learning rate
    model = "mlp"              # mlp | cnn | cnn-bn | tabular | logistic
    seeds = [0]
    attackers = [0.2]          # fractions of Byzantine clients
    partitions = ["iid", "dirichlet:0.3"]   # iid | dirichlet:<alpha> | shards:<per client> | natural,
                               # then +power:<a> or +quantity-dirichlet:<beta> (quantity skew) and/or
                               # +shift (feature shift), e.g. "dirichlet:0.5+power:1.5+shift"
    dataset = "digits"         # or breast-cancer (bundled too), or mnist | fashion-mnist | cifar10 |
                               # femnist | medmnist:<name>, read from
    # data = "/srv/mnist"      # the folder holding its files (not for the bundled digits and breast-cancer;
                               # secagg bench --data overrides)
    # train_size = 12000       # a seeded random subset of the train / test examples (default: all)
    # test_size = 2000

    [attacks]                  # name -> what the Byzantine clients do; "none" = no attackers
    none = {}
    sign-flip = { update = { kind = "sign-flip" } }
    backdoor = { data = { kind = "backdoor" }, update = { kind = "model-replacement" } }
    durable = { data = { kind = "backdoor" }, update = { kind = "neurotoxin" }, stop_round = 5 }
    # start_round / stop_round: the attack window (1-based, both included; default: every round)

    [defences]                 # name -> an aggregator (secagg.aggregation kinds, dp kinds)
    mean = { kind = "mean" }
    trimmed_mean = { kind = "trimmed-mean", f = "auto" }   # "auto": f = the cell's attacker count

``dataset`` other than digits reads local files under ``data`` (see :mod:`secagg.data.datasets`;
nothing is downloaded); the presets ``mnist``, ``fashion-mnist``, ``cifar10``, ``femnist`` and
``medmnist`` name their data set but no path: give it with ``secagg bench --preset mnist --data PATH``
(:func:`with_data`). ``natural`` needs a data set with its own parties: femnist (one writer per
client) or breast-cancer (one site per client, sites differing in case mix); the ``breast-cancer``
preset trains the bundled breast-cancer table and reads no files.

An optional ``[[privacy]]`` array adds gradient-inversion and membership-inference cells (see
:mod:`attacks.bench.privacy`). Named presets ship with the package (``quick``, ``default``, ``full``).

A secure-bucketing defence runs under the threat model it states (``threat_model``, see
:mod:`secagg.aggregation.secure_bucketing`); a grid is refused at load when its buckets cannot tolerate
the colluders that model assumes among ``run.clients`` (every client takes part in every round), and
the reports say which model each such cell assumed (:meth:`BenchConfig.threat_model`).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import attacks  # noqa: F401  (registers every attack kind)
import dp  # noqa: F401  (registers the DP aggregators, so grids can name them)
from attacks.base import UpdateAttack
from attacks.bench.privacy import PrivacyCell, parse_cells
from attacks.data_poisoning import DataAttack
from secagg.aggregation import Aggregator, SecureBucketing
from secagg.data.datasets import (
    check_dataset,
    check_files,
    has_natural_partition,
    has_writers,
    is_bundled,
    is_tabular,
)
from secagg.data.partition import PartitionConfig
from secagg.data.shift import FeatureShift
from secagg.errors import ConfigError
from secagg.models import model_names

PRESETS = ("quick", "default", "full", "mnist", "fashion-mnist", "cifar10", "femnist", "medmnist",
           "breast-cancer")
RUN_KEYS = {"rounds": 10, "clients": 20, "local_epochs": 1, "batch_size": 16, "lr": 0.1, "model": "mlp",
            "seeds": [0], "attackers": [0.2], "partitions": ["iid"], "dataset": "digits", "data": None,
            "train_size": None, "test_size": None}
NO_ATTACK = "none"
#: data attacks that stamp a pixel trigger on images (n, c, h, w): refused on a tabular data set
IMAGE_DATA_ATTACKS = ("backdoor", "dba")


@dataclass(frozen=True)
class AttackSpec:
    """One named attack: an optional update attack and an optional data attack (both None: honest),
    made in rounds ``start_round..stop_round`` (1-based, both included; ``stop_round=None``: to the
    end of the run); outside that window the Byzantine clients behave honestly."""

    name: str
    update: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    start_round: int = 1
    stop_round: int | None = None

    @property
    def is_none(self) -> bool:
        return self.update is None and self.data is None

    def build(self) -> tuple[UpdateAttack | None, DataAttack | None]:
        update = None if self.update is None else UpdateAttack.from_dict(self.update)
        data = None if self.data is None else DataAttack.from_dict(self.data)
        return update, data


@dataclass(frozen=True)
class BenchConfig:
    """A validated benchmark grid (see the module docstring for the file format)."""

    rounds: int
    clients: int
    local_epochs: int
    batch_size: int
    lr: float
    model: str
    seeds: tuple[int, ...]
    attackers: tuple[float, ...]
    partitions: tuple[str, ...]
    attacks: tuple[AttackSpec, ...]
    defences: tuple[tuple[str, dict[str, Any]], ...]
    name: str = "custom"
    privacy: tuple[PrivacyCell, ...] = ()
    dataset: str = "digits"
    data: str | None = None
    train_size: int | None = None
    test_size: int | None = None

    def defence(self, name: str, attackers: int) -> Aggregator:
        """The named defence assuming ``attackers`` Byzantine clients (``f = "auto"`` becomes that)."""
        spec = dict(self.defences)[name]
        return Aggregator.from_dict(_resolve_auto(spec, attackers))

    def attacker_count(self, fraction: float) -> int:
        return round(fraction * self.clients)

    def threat_model(self, name: str) -> str | None:
        """The ``threat_model`` of the named defence's secure bucketing, ``None`` if it has none."""
        rule = secure_bucketing(self.defence(name, 1))
        return None if rule is None else rule.threat_model

    def threat_note(self, name: str) -> str | None:
        """One sentence for the reports: the named defence's secure-bucketing threat model, the
        colluders it assumes among :attr:`clients` and how many its buckets tolerate (else ``None``)."""
        rule = secure_bucketing(self.defence(name, 1))
        if rule is None:
            return None
        tolerated = rule.check_collusion(self.clients)
        if rule.threat_model == "honest-but-curious-server":
            assumed = ("the server follows the protocol and no client colludes with it; the buckets "
                       f"tolerate {tolerated} colluding client(s)"
                       + (", so one client colluding with the server would recover its bucket-mate's "
                          "update exactly" if tolerated == 0 else ""))
        else:
            c = rule.secure.corrupt_fraction
            assumed = (f"up to floor({c:g} x {self.clients}) = {rule.assumed_colluders(self.clients)} "
                       f"client(s) collude with the server, seated wherever it likes; the buckets tolerate "
                       f"{tolerated}")
        return f"`{name}`: buckets of >= {rule.bucket_size}, threat model `{rule.threat_model}`: {assumed}."


def secure_bucketing(aggregator: Aggregator) -> SecureBucketing | None:
    """The :class:`SecureBucketing` in ``aggregator`` or nested in it (outermost first), else ``None``."""
    if isinstance(aggregator, SecureBucketing):
        return aggregator
    for f in fields(aggregator):  # type: ignore[arg-type]
        value = getattr(aggregator, f.name)
        if isinstance(value, Aggregator) and (found := secure_bucketing(value)) is not None:
            return found
    return None


def _resolve_auto(spec: Any, attackers: int) -> Any:
    if isinstance(spec, dict):
        return {k: (attackers if v == "auto" and k == "f" else _resolve_auto(v, attackers))
                for k, v in spec.items()}
    return spec


_PARTITION_SPELLING = ("one of 'iid', 'dirichlet:<alpha>', 'shards:<per client>', 'natural', optionally "
                       "followed by '+power:<a>' or '+quantity-dirichlet:<beta>' (quantity skew) and then "
                       "'+shift' (feature shift), e.g. 'dirichlet:0.5+power:1.5', 'iid+shift'")


def partition_config(text: str) -> PartitionConfig:
    """The :class:`PartitionConfig` of a ``run.partitions`` entry (see :func:`partition_spec`)."""
    return partition_spec(text)[0]


def partition_spec(text: str) -> tuple[PartitionConfig, FeatureShift | None]:
    """A ``run.partitions`` entry as its partition and feature shift.

    ``"iid"``, ``"dirichlet:<alpha>"``, ``"shards:<per client>"`` or ``"natural"`` (the label split),
    then optionally quantity skew, ``"+power:<a>"`` (power-law client sizes, exponent ``a``) or
    ``"+quantity-dirichlet:<beta>"`` (NIID-Bench's ``Dir(beta)`` shares), and optionally ``"+shift"``
    (:class:`~secagg.data.shift.FeatureShift` at its default strengths), in that order: e.g.
    ``"dirichlet:0.5+power:1.5"``, ``"iid+shift"``. :class:`ConfigError` naming ``run.partitions``."""
    kind, *extras = text.split("+") if isinstance(text, str) else ("",)
    kind, _, arg = kind.partition(":")
    fields: dict[str, Any] = {}
    shift = None
    try:
        if extras and extras[0].startswith(("power:", "quantity-dirichlet:")):
            law, _, value = extras.pop(0).partition(":")
            fields.update(quantity="power-law" if law == "power" else "dirichlet",
                          quantity_alpha=float(value))
        if extras and extras[0] == "shift":
            extras.pop(0)
            shift = FeatureShift()
        if not extras:
            if kind in ("iid", "natural") and not arg:
                return PartitionConfig(kind, **fields), shift
            if kind == "dirichlet" and arg:
                return PartitionConfig("dirichlet", alpha=float(arg), **fields), shift
            if kind == "shards" and arg:
                return PartitionConfig("shards", shards_per_client=int(arg), **fields), shift
    except ConfigError as exc:
        raise ConfigError(f"run.partitions: {text!r}: {exc}") from None
    except ValueError:
        pass
    raise ConfigError(f"run.partitions: {text!r} is not {_PARTITION_SPELLING}")


def _natural(partitions: tuple[str, ...]) -> bool:
    """Whether some entry of ``run.partitions`` is the natural split (with or without ``+...``)."""
    return any(p.split("+")[0] == "natural" for p in partitions)


def _check_data(dataset: Any, data: Any, partitions: tuple[str, ...], where: str = "run.") -> None:
    """The grid's data set, its path and its partitions agree (the files are checked by :func:`with_data`)."""
    try:
        check_dataset(dataset)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    if data is not None and (not isinstance(data, str) or not data):
        raise ConfigError(f"{where}data: expected a folder path (a string), got {data!r}")
    if is_bundled(dataset) and data is not None:
        raise ConfigError(f"{where}data: {dataset} ships with scikit-learn and reads no files, got {data!r}")
    if _natural(partitions) and not has_natural_partition(dataset):
        raise ConfigError(f"{where}partitions: 'natural' gives each client one writer, and {dataset} has no "
                          f"writers (femnist has) nor sites (breast-cancer has: one site per client)")


def _check_inputs(dataset: str, specs: tuple[AttackSpec, ...]) -> None:
    """Refuse, before any cell runs, an image-only data attack (a pixel-trigger backdoor) on a data set
    of table rows (breast-cancer): :class:`ConfigError` naming the attack."""
    if not is_tabular(dataset):
        return
    for attack in specs:
        kind = (attack.data or {}).get("kind")
        if kind in IMAGE_DATA_ATTACKS:
            raise ConfigError(f"attacks.{attack.name}: the {kind} attack stamps a pixel trigger on images "
                              f"(n, c, h, w), and {dataset}'s inputs are table rows (n, features): drop it "
                              f"from a {dataset} grid (label-flip and the update attacks work on tables)")


def with_data(config: BenchConfig, dataset: str | None = None, data: str | Path | None = None
              ) -> BenchConfig:
    """``config`` on ``dataset`` read from ``data`` (each replacing the grid's ``[run]`` value when
    given), checked before any cell runs: :class:`ConfigError` when a data set other than digits has
    no path, :class:`DataError` listing every expected file that is missing (nothing is downloaded)."""
    dataset = config.dataset if dataset is None else dataset
    path = (None if is_bundled(dataset) else config.data) if data is None else os.fspath(data)
    _check_data(dataset, path, config.partitions, where="")
    _check_inputs(dataset, config.attacks)
    if not is_bundled(dataset):
        if path is None:
            raise ConfigError(f"data: the {config.name} grid trains on {dataset}, read from local files: "
                              f"give the folder holding them with --data PATH (or data = \"...\" in [run]); "
                              f"nothing is downloaded")
        check_files(dataset, path)
    return replace(config, dataset=dataset, data=path)


def _check_window(where: str, attack: AttackSpec) -> None:
    """An attack's window: integers ``1 <= start_round <= stop_round``, only on a real attack."""
    if attack.is_none and (attack.start_round != 1 or attack.stop_round is not None):
        raise ConfigError(f"{where}: start_round, stop_round: an attack window needs an update or a data "
                          f"attack")
    start, stop = attack.start_round, attack.stop_round
    if not isinstance(start, int) or isinstance(start, bool) or start < 1:
        raise ConfigError(f"{where}.start_round: expected an integer >= 1, got {start!r}")
    if stop is not None and (not isinstance(stop, int) or isinstance(stop, bool) or stop < start):
        raise ConfigError(f"{where}.stop_round: expected an integer >= start_round = {start}, got {stop!r}")


def _check_keys(where: str, table: Any, allowed: list[str]) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def _list(where: str, value: Any, kind: type | tuple[type, ...]) -> tuple[Any, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, kind) and not isinstance(v, bool) for v in value):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}: expected a non-empty list of {names}, got {value!r}")
    return tuple(value)


def parse(data: dict[str, Any], name: str = "custom") -> BenchConfig:
    """A :class:`BenchConfig` from the parsed TOML tables; :class:`ConfigError` names the bad key."""
    _check_keys("config", data, ["run", "attacks", "defences", "privacy"])
    for table in ("attacks", "defences"):
        if table not in data:
            raise ConfigError(f"config: missing table [{table}]")
    run = {**RUN_KEYS, **data.get("run", {})}
    _check_keys("run", run, list(RUN_KEYS))
    for key in ("rounds", "clients", "local_epochs", "batch_size"):
        if not isinstance(run[key], int) or isinstance(run[key], bool) or run[key] < (0 if key == "batch_size"
                                                                                        else 1):
            raise ConfigError(f"run.{key}: expected an integer >= {0 if key == 'batch_size' else 1}, "
                              f"got {run[key]!r}")
    if not isinstance(run["lr"], int | float) or isinstance(run["lr"], bool) or not run["lr"] > 0:
        raise ConfigError(f"run.lr: expected a number > 0, got {run['lr']!r}")
    if run["model"] not in model_names():
        raise ConfigError(f"run.model: {run['model']!r} is not one of {', '.join(model_names())}")
    seeds = _list("run.seeds", run["seeds"], int)
    if any(s < 0 for s in seeds):
        raise ConfigError(f"run.seeds: must be >= 0, got {list(seeds)}")
    fractions = tuple(float(f) for f in _list("run.attackers", run["attackers"], (int, float)))
    if any(not 0.0 < f < 0.5 for f in fractions):
        raise ConfigError(f"run.attackers: fractions must be in (0, 0.5), got {list(fractions)}")
    partitions = _list("run.partitions", run["partitions"], str)
    for p in partitions:
        partition_config(p)
    _check_data(run["dataset"], run["data"], partitions)
    for key in ("train_size", "test_size"):
        if run[key] is not None and (not isinstance(run[key], int) or isinstance(run[key], bool)
                                     or run[key] < 1):
            raise ConfigError(f"run.{key}: expected an integer >= 1, got {run[key]!r}")
    if run["train_size"] is not None and _natural(partitions) and has_writers(run["dataset"]):
        raise ConfigError("run.train_size: the natural partition keeps whole writers; run.clients sets how "
                          "many writers train")

    specs = []
    attacks_table = data["attacks"]
    _check_keys("attacks", attacks_table, list(attacks_table))
    if not attacks_table:
        raise ConfigError("attacks: empty; name at least one attack (or none = {})")
    for key, spec in attacks_table.items():
        _check_keys(f"attacks.{key}", spec, ["update", "data", "start_round", "stop_round"])
        attack = AttackSpec(key, spec.get("update"), spec.get("data"), spec.get("start_round", 1),
                            spec.get("stop_round"))
        _check_window(f"attacks.{key}", attack)
        try:
            attack.build()
        except ConfigError as exc:
            raise ConfigError(f"attacks.{key}: {exc} (update kinds: {', '.join(UpdateAttack.kinds())}; "
                              f"data kinds: {', '.join(DataAttack.kinds())})") from exc
        specs.append(attack)
    _check_inputs(run["dataset"], tuple(specs))

    defences = []
    defences_table = data["defences"]
    if not isinstance(defences_table, dict) or not defences_table:
        raise ConfigError("defences: expected a non-empty table of name = { kind = ... }")
    for key, spec in defences_table.items():
        try:
            rule = secure_bucketing(Aggregator.from_dict(_resolve_auto(spec, 1)))
            if rule is not None:  # every round has run.clients clients: refuse now, not mid-grid
                rule.check_collusion(run["clients"])
        except ConfigError as exc:
            raise ConfigError(f"defences.{key}: {exc}") from exc
        defences.append((key, spec))

    return BenchConfig(rounds=run["rounds"], clients=run["clients"], local_epochs=run["local_epochs"],
                       batch_size=run["batch_size"], lr=float(run["lr"]), model=run["model"], seeds=seeds,
                       attackers=fractions, partitions=partitions, attacks=tuple(specs),
                       defences=tuple(defences), name=name,
                       privacy=parse_cells(data["privacy"]) if "privacy" in data else (),
                       dataset=run["dataset"], data=run["data"], train_size=run["train_size"],
                       test_size=run["test_size"])


def load(path: str | Path | None = None, preset: str | None = None) -> BenchConfig:
    """Read a config file, or a named preset (:data:`PRESETS`)."""
    if (path is None) == (preset is None):
        raise ConfigError("config: give exactly one of a config file and a preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"preset: {preset!r} is not one of {', '.join(PRESETS)}")
        text = resources.files("attacks.bench").joinpath("presets", f"{preset}.toml").read_text()
        name = preset
    else:
        text, name = Path(path).read_text(), Path(path).stem  # type: ignore[arg-type]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: not valid TOML ({exc})") from exc
    return parse(data, name)

