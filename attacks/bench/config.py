"""The benchmark grid, read from a TOML file: attacks x defences x attacker fractions x partitions x seeds.

A file has four tables; every key is checked and an unknown key or value names itself and the
allowed ones::

    [run]                      # the FedAvg task every cell trains
    rounds = 10                # FedAvg rounds per cell
    clients = 20               # clients in the federation (all take part in every round)
    local_epochs = 1
    batch_size = 16
    lr = 0.1                   # client learning rate
    model = "mlp"              # mlp | cnn | cnn-bn
    seeds = [0]
    attackers = [0.2]          # fractions of Byzantine clients
    partitions = ["iid", "dirichlet:0.3"]   # iid | dirichlet:<alpha> | shards:<per client>

    [attacks]                  # name -> what the Byzantine clients do; "none" = no attackers
    none = {}
    sign-flip = { update = { kind = "sign-flip" } }
    backdoor = { data = { kind = "backdoor" }, update = { kind = "model-replacement" } }

    [defences]                 # name -> an aggregator (secagg.aggregation kinds, dp kinds)
    mean = { kind = "mean" }
    trimmed_mean = { kind = "trimmed-mean", f = "auto" }   # "auto": f = the cell's attacker count

An optional ``[[privacy]]`` array adds gradient-inversion and membership-inference cells (see
:mod:`attacks.bench.privacy`). Named presets ship with the package (``quick``, ``default``, ``full``).

A secure-bucketing defence runs under the threat model it states (``threat_model``, see
:mod:`secagg.aggregation.secure_bucketing`); a grid is refused at load when its buckets cannot tolerate
the colluders that model assumes among ``run.clients`` (every client takes part in every round), and
the reports say which model each such cell assumed (:meth:`BenchConfig.threat_model`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import attacks  # noqa: F401  (registers every attack kind)
import dp  # noqa: F401  (registers the DP aggregators, so grids can name them)
from attacks.base import UpdateAttack
from attacks.bench.privacy import PrivacyCell, parse_cells
from attacks.data_poisoning import DataAttack
from secagg.aggregation import Aggregator, SecureBucketing
from secagg.data.partition import PartitionConfig
from secagg.errors import ConfigError
from secagg.models import model_names

PRESETS = ("quick", "default", "full")
RUN_KEYS = {"rounds": 10, "clients": 20, "local_epochs": 1, "batch_size": 16, "lr": 0.1, "model": "mlp",
            "seeds": [0], "attackers": [0.2], "partitions": ["iid"]}
NO_ATTACK = "none"


@dataclass(frozen=True)
class AttackSpec:
    """One named attack: an optional update attack and an optional data attack (both None: honest)."""

    name: str
    update: dict[str, Any] | None = None
    data: dict[str, Any] | None = None

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


def partition_config(text: str) -> PartitionConfig:
    """``"iid"``, ``"dirichlet:<alpha>"`` or ``"shards:<per client>"`` as a :class:`PartitionConfig`."""
    kind, _, arg = text.partition(":")
    try:
        if kind == "iid" and not arg:
            return PartitionConfig("iid")
        if kind == "dirichlet" and arg:
            return PartitionConfig("dirichlet", alpha=float(arg))
        if kind == "shards" and arg:
            return PartitionConfig("shards", shards_per_client=int(arg))
    except ValueError:
        pass
    raise ConfigError(f"run.partitions: {text!r} is not one of 'iid', 'dirichlet:<alpha>', "
                      f"'shards:<per client>'")


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

    specs = []
    attacks_table = data["attacks"]
    _check_keys("attacks", attacks_table, list(attacks_table))
    if not attacks_table:
        raise ConfigError("attacks: empty; name at least one attack (or none = {})")
    for key, spec in attacks_table.items():
        _check_keys(f"attacks.{key}", spec, ["update", "data"])
        attack = AttackSpec(key, spec.get("update"), spec.get("data"))
        try:
            attack.build()
        except ConfigError as exc:
            raise ConfigError(f"attacks.{key}: {exc} (update kinds: {', '.join(UpdateAttack.kinds())}; "
                              f"data kinds: {', '.join(DataAttack.kinds())})") from exc
        specs.append(attack)

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
                       privacy=parse_cells(data["privacy"]) if "privacy" in data else ())


def load(path: str | Path | None = None, preset: str | None = None) -> BenchConfig:
    """Read a config file, or a named preset (``quick``, ``default``, ``full``)."""
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

