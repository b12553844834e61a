"""The attack benchmark: grid files, resumption, reports, and the papers' effects on the quick preset."""

from __future__ import annotations

import csv
import json
import tomllib
from importlib import resources

import pytest
from grids import TINY

from attacks.bench import load, run, run_grid, write_reports
from attacks.bench.config import parse
from attacks.bench.runner import cells, experiment_config
from secagg.cli import main
from secagg.errors import ConfigError
from secagg.task import make_task


def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return load(path)


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_grid_has_one_baseline_per_defence_and_every_attacked_cell(tmp_path):
    grid = cells(tiny(tmp_path))
    assert [(c.attack, c.defence, c.attackers) for c in grid] == [
        ("none", "mean", 0.0), ("ipm", "mean", 0.2), ("none", "median", 0.0), ("ipm", "median", 0.2)]


def test_an_interrupted_grid_resumes_to_the_same_table(tmp_path):
    config = tiny(tmp_path)
    first = run_grid(config, tmp_path / "a", progress=False, jobs=1, limit=2)
    assert len(first) == 2 and len(json.loads((tmp_path / "a" / "results.json").read_text())["cells"]) == 2
    resumed = run_grid(config, tmp_path / "a", progress=False, jobs=1)
    straight = run_grid(config, tmp_path / "b", progress=False, jobs=1)
    assert without_time(resumed) == without_time(straight) and len(straight) == 4 + 1  # + the baseline
    assert without_time(resumed[:2]) == without_time(first), "finished cells are kept, not rerun"
    central = straight[-1]
    assert central["section"] == "baseline" and central["epochs"] == config.rounds * config.local_epochs
    assert central["examples"] == sum(len(p) for p in make_task(
        experiment_config(config, cells(config)[0]).task, seed=0).data.partition)


def test_without_a_terminal_every_finished_cell_is_one_line_on_stdout(tmp_path, capsys):
    config = tiny(tmp_path)
    run_grid(config, tmp_path, progress=True, jobs=1)
    lines = capsys.readouterr().out.strip().splitlines()
    total = len(cells(config)) + len(config.seeds)
    assert lines[0].startswith(f"bench {config.name}: {total} of {total} cells to run")
    assert [line.split("]")[0] for line in lines[1:]] == [f"[{k}/{total}" for k in range(1, total + 1)]
    assert "ipm vs median (0.2 attackers, iid, seed 0): accuracy 0." in "\n".join(lines)
    assert "centralized baseline (seed 0): accuracy 0." in lines[-1]
    assert run_grid(config, tmp_path, progress=True, jobs=1) and capsys.readouterr().out == "", \
        "a finished grid prints nothing"


def test_the_summary_compares_clean_fedavg_with_centralized_training(tmp_path):
    config = tiny(tmp_path)
    rows = run_grid(config, tmp_path, progress=False, jobs=1)
    summary = write_reports(tmp_path, config, rows)["summary"].read_text()
    central = next(r for r in rows if r.get("section") == "baseline")
    clean = next(r for r in rows if r.get("attack") == "none" and r.get("defence") == "mean")
    assert f"accuracy {central['accuracy']:.3f}" in summary
    gap = 100 * (central["accuracy"] - clean["accuracy"])
    assert f"| iid | {clean['accuracy']:.3f} | {gap:+.1f} |" in summary


def test_reports_have_the_promised_columns_and_files(tmp_path):
    config = tiny(tmp_path)
    rows = run_grid(config, tmp_path, progress=False, jobs=1)
    paths = write_reports(tmp_path, config, rows)
    with paths["csv"].open() as fh:
        table = list(csv.DictReader(fh))
    promised = {"attack", "defence", "attackers", "partition", "seed", "accuracy", "attack_success"}
    assert promised <= set(table[0])
    assert len(table) == 4 and all(r["attack_success"] == "" for r in table), "baselines stay out of the csv"
    ipm_mean = next(r for r in table if r["attack"] == "ipm" and r["defence"] == "mean")
    assert float(ipm_mean["accuracy"]) == pytest.approx(rows[1]["accuracy"])
    summary = paths["summary"].read_text()
    assert "| defence | none | ipm | worst |" in summary
    assert paths["heatmap"].stat().st_size > 0 and (tmp_path / "accuracy_ipm.png").stat().st_size > 0


def test_a_results_file_from_another_grid_is_not_mixed_in(tmp_path):
    run_grid(tiny(tmp_path), tmp_path, progress=False, jobs=1, limit=1)
    other = parse(tomllib.loads(TINY.replace("rounds = 2", "rounds = 3")))
    with pytest.raises(ConfigError, match="written by another benchmark configuration"):
        run_grid(other, tmp_path, progress=False, jobs=1)


@pytest.mark.parametrize(("edit", "message"), [
    (("rounds = 2", "round = 2"), r"run: unknown key\(s\) round; allowed: rounds, clients"),
    (('partitions = ["iid"]', 'partitions = ["dirichlet"]'),
     r"run.partitions: 'dirichlet' is not one of 'iid', 'dirichlet:<alpha>'"),
    (('kind = "ipm"', 'kind = "ipmm"'), r"attacks.ipm: attack.kind: unknown 'ipmm'; known: alie"),
    (("epsilon = 10.0", "epsilon = -1.0"), r"attacks.ipm: epsilon: must be > 0"),
    (('median = { kind = "median" }', 'median = { kind = "medain" }'),
     r"defences.median: aggregator.kind: unknown 'medain'; known: "),
    (("attackers = [0.2]", "attackers = [0.6]"), r"run.attackers: fractions must be in \(0, 0.5\)"),
    (("[defences]", "[defense]"), r"config: unknown key\(s\) defense; allowed: run, attacks, defences"),
])
def test_a_malformed_config_names_the_key_and_the_allowed_values(edit, message):
    with pytest.raises(ConfigError, match=message):
        parse(tomllib.loads(TINY.replace(*edit)))


def test_bench_cli_rejects_a_bad_file_with_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("clients = 5", "clients = 0"))
    assert main(["bench", "--config", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "run.clients: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_every_preset_parses():
    for preset in ("quick", "default", "full"):
        assert cells(load(preset=preset))


SECURE_BUCKETS = 'median = { kind = "secure-bucketing", bucket_size = 2, inner = { kind = "median" } }'


def test_secure_bucketing_cells_state_their_threat_model(tmp_path):
    # buckets of 2 run only under an explicit threat model; the presets set it and the reports show it
    with pytest.raises(ConfigError, match=r"defences.median: bucket_size: must be >= 3 under "
                                          r"threat_model='colluding-clients', got 2"):
        parse(tomllib.loads(TINY.replace('median = { kind = "median" }', SECURE_BUCKETS)))
    too_small = SECURE_BUCKETS.replace("bucket_size = 2", 'bucket_size = 3, secure = { kind = "secure-sum", '
                                                          'corrupt_fraction = 0.1 }')
    with pytest.raises(ConfigError, match=r"defences.median: bucket_size: must be >= 4 for a round of 20 "):
        parse(tomllib.loads(TINY.replace("clients = 5", "clients = 20").replace(
            'median = { kind = "median" }', too_small)))
    assert load(preset="default").threat_model("secure_bucketing") == "honest-but-curious-server"
    full = load(preset="full")
    assert full.threat_model("secure_bucketing_3") == "colluding-clients"
    assert full.threat_model("mean") is None and full.threat_note("mean") is None
    assert "floor(0.05 x 30) = 1 client(s) collude with the server" in full.threat_note("secure_bucketing_3")
    config = parse(tomllib.loads(TINY.replace('median = { kind = "median" }', SECURE_BUCKETS.replace(
        "bucket_size = 2", 'bucket_size = 2, threat_model = "honest-but-curious-server"'))))
    rows = [{"attack": a, "defence": d, "attackers": f, "partition": "iid", "seed": 0, "accuracy": 0.5,
             "best_accuracy": 0.5, "attack_success": None, "epsilon": None, "rounds": 2, "stopped": None,
             "seconds": 1.0, "curve": [0.4, 0.5], "attack_success_curve": [None, None]}
            for d in ("mean", "median") for a, f in (("none", 0.0), ("ipm", 0.2))]
    paths = write_reports(tmp_path, config, rows)
    with paths["csv"].open() as fh:
        table = list(csv.DictReader(fh))
    assert {r["defence"]: r["threat_model"] for r in table} == {"mean": "",
                                                                "median": "honest-but-curious-server"}
    summary = paths["summary"].read_text()
    assert "| median (honest-but-curious-server) | 0.500 | 0.500 | 0.500 |" in summary
    assert "`median`: buckets of >= 2, threat model `honest-but-curious-server`" in summary
    assert "recover its bucket-mate's update exactly" in summary


@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    run(out, preset="quick", jobs=1, progress=False)
    return out


@pytest.fixture(scope="module")
def quick(quick_dir):
    out = quick_dir
    saved = json.loads((out / "results.json").read_text())
    table = {(r["attack"], r["defence"], r["partition"]): r for r in saved["cells"]}
    table |= {(r["attack"], r["defence"], "privacy"): r for r in saved["privacy"]}
    assert (out / "privacy.csv").exists() and (out / "privacy.png").exists()
    assert "## Privacy: what updates and models leak" in (out / "summary.md").read_text()
    return table


@pytest.mark.slow
def test_quick_preset_sign_flip_and_ipm_break_the_mean_not_the_robust_rules(quick):
    for attack in ("sign-flip", "ipm"):
        mean = quick[(attack, "mean", "iid")]["accuracy"]
        assert mean < 0.2, f"{attack}: FedAvg collapses to chance (10 classes), got {mean}"
        for rule in ("median", "trimmed_mean", "krum"):
            kept = quick[(attack, rule, "iid")]["accuracy"] / quick[("none", rule, "iid")]["accuracy"]
            assert kept > 0.8, f"{attack} vs {rule}: keeps most of its clean accuracy, kept {kept:.2f}"


@pytest.mark.slow
def test_quick_preset_alie_hurts_krum_more_than_the_mean_on_non_iid_data(quick):
    p = "dirichlet:0.3"
    assert quick[("alie", "krum", p)]["accuracy"] < quick[("alie", "mean", p)]["accuracy"]


@pytest.mark.slow
def test_quick_preset_model_replacement_backdoor_and_what_reduces_it(quick):
    success = {d: quick[("backdoor", d, "iid")]["attack_success"] for d in ("mean", "clip", "clip_dp")}
    assert success["mean"] >= 0.9
    assert success["clip_dp"] < success["clip"] < success["mean"]


def test_a_cell_driven_to_nan_is_a_result_not_a_crash(tmp_path):
    text = TINY.replace('ipm = { update = { kind = "ipm", epsilon = 10.0 } }',
                        'boom = { update = { kind = "scaling", factor = 1e30 } }')
    rows = run_grid(parse(tomllib.loads(text)), tmp_path, progress=False, jobs=1)
    boom = next(r for r in rows if r["attack"] == "boom" and r["defence"] == "mean")
    assert boom["stopped"].startswith("diverged in round"), boom["stopped"]
    assert boom["rounds"] == 1 and boom["accuracy"] == pytest.approx(0.1, abs=0.05), "the last finite model"
    median = next(r for r in rows if r["attack"] == "boom" and r["defence"] == "median")
    assert median["stopped"] is None and median["rounds"] == 2, "the median is not dragged to NaN"


def test_parallel_cells_give_the_same_table(tmp_path):
    config = tiny(tmp_path)
    parallel = run_grid(config, tmp_path / "p", jobs=2, progress=False)
    serial = run_grid(config, tmp_path / "s", jobs=1, progress=False)
    assert without_time(parallel) == without_time(serial)


@pytest.mark.slow
def test_quick_preset_privacy_cells_show_leakage_and_what_stops_it(quick):
    from attacks.membership import dp_tpr_bound

    plain, summed, noised = (quick[("dlg", d, "privacy")] for d in ("none", "secure_sum_8", "dp_z0.1"))
    assert plain["psnr"] > 80 and plain["label_accuracy"] == 1.0, "a single gradient gives the image away"
    assert summed["psnr"] < 20 and noised["psnr"] < 20, "the sum of 8, or clip + noise, does not"
    assert noised["epsilon"] > 0 and plain["epsilon"] is None
    lira, dp_lira = quick[("lira", "none", "privacy")], quick[("lira", "dpsgd_eps1", "privacy")]
    assert lira["auc"] > 0.55, "an undefended model leaks membership"
    assert dp_lira["epsilon"] <= 1.0 + 1e-9
    assert dp_lira["tpr_at_1pct_fpr"] <= dp_tpr_bound(0.01, dp_lira["epsilon"], 1e-5)
    assert dp_lira["auc"] < lira["auc"], "the same attack, with power on the plain model, loses it under DP"


@pytest.mark.parametrize(("table", "message"), [
    ('[[privacy]]\nattack = "dlgg"', r"privacy\[0\].attack: 'dlgg' is not one of dlg, inverting_gradients"),
    ('[[privacy]]\nattack = "lira"\ndefence = "secure_sum"',
     r"privacy\[0\].defence: 'secure_sum' is not one of none, dpsgd, dp_fedavg for lira"),
    ('[[privacy]]\nattack = "dlg"\ndefence = "dp"', r"privacy\[0\].noise_multiplier: dp needs a value > 0"),
    ('[[privacy]]\nattack = "dlg"\nclient = 3', r"privacy\[0\]: unknown key\(s\) client; allowed: attack"),
])
def test_a_malformed_privacy_cell_names_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        parse(tomllib.loads(TINY + "\n" + table + "\n"))


def test_privacy_cells_are_resumed_like_the_others(tmp_path):
    text = TINY + '\n[[privacy]]\nattack = "dlg"\nexamples = 1\n'
    config = parse(tomllib.loads(text))
    first = run_grid(config, tmp_path, progress=False, jobs=1, limit=4)
    assert all(r.get("section") != "privacy" for r in first)
    rows = run_grid(config, tmp_path, progress=False, jobs=1)
    privacy = [r for r in rows if r.get("section") == "privacy"]
    assert len(privacy) == 1 and privacy[0]["defence"] == "none" and privacy[0]["psnr"] > 80
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["cells"]) == 4 and saved["privacy"] == privacy


def _tables(out) -> dict[str, list]:
    """The grid's written tables without their wall-time columns and lines."""
    tables = {}
    for name in ("results.csv", "privacy.csv"):
        with open(out / name, newline="") as f:
            tables[name] = [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]
    tables["summary.md"] = [line for line in (out / "summary.md").read_text().splitlines()
                            if "s of training" not in line]
    return tables


@pytest.mark.slow
def test_every_quick_preset_cell_kind_on_a_local_ray_gives_identical_tables(tmp_path):
    """Every attack and defence of the quick preset (one round, one partition, one privacy cell) as Ray
    tasks on a local Ray with 2 CPUs: the same tables as the in-process run. (The whole preset on Ray
    takes minutes on 2 cores and shows nothing more: the cells are the same values, run longer.)"""
    ray = pytest.importorskip("ray")

    data = tomllib.loads((resources.files("attacks.bench") / "presets" / "quick.toml").read_text())
    data["run"] |= {"rounds": 1, "partitions": ["iid"]}
    data["privacy"] = [{"attack": "dlg", "defence": "none", "examples": 1}]
    config = parse(data)
    local = run_grid(config, tmp_path / "local", progress=False, jobs=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        on_ray = run_grid(config, tmp_path / "ray", progress=False, backend="ray")
    finally:
        ray.shutdown()
    poisoning = [r for r in local if r.get("section") not in ("privacy", "baseline")]
    assert len(poisoning) == len(data["attacks"]) * len(data["defences"])
    for name in ("local", "ray"):
        write_reports(tmp_path / name, config, local if name == "local" else on_ray)
    assert _tables(tmp_path / "ray") == _tables(tmp_path / "local")


@pytest.mark.parametrize("partition", ["iid", "dirichlet:0.3"])
def test_the_default_preset_trains_clean_fedavg_within_3_points_of_centralized(partition):
    """The issue's fidelity bar: an attack's damage must not hide under an undertrained baseline."""
    import torch

    from attacks.bench.runner import Cell, run_cell, run_centralized

    torch.set_num_threads(1)
    config = load(preset="default")
    assert partition in config.partitions
    clean = run_cell(config, Cell("none", "mean", 0.0, partition, config.seeds[0]))["accuracy"]
    central = run_centralized(config, config.seeds[0])["accuracy"]
    assert central > 0.95 and clean >= central - 0.03, (clean, central)
