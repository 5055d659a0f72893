"""genas/ablation.py: sweep tables from cached losses over a tiny supernet and a handful of architectures."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from genas import ablation
from genas.scoring.formulas import flatness_from_losses
from genas.spaces import build_supernet
from genas.spaces.nb201 import NB201Space

REPO = Path(__file__).resolve().parents[1]
ARCHS = ["|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
         "|skip_connect~0|+|nor_conv_1x1~0|none~1|+|avg_pool_3x3~0|nor_conv_3x3~1|skip_connect~2|",
         "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|",
         "|nor_conv_1x1~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|skip_connect~1|nor_conv_1x1~2|",
         "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
         "|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|nor_conv_1x1~0|none~1|nor_conv_3x3~2|"]
ACCURACY = [93.1, 88.0, 70.2, 90.5, 60.0, 89.9]
CONFIG = """space: nb201
supernet: {C: 4, N: 1}
data: {name: digits}
train: {device: cpu}
score:
  sigmas: [2.0e-3, 1.0e-2, 2.0e-2]
  recalib_batches: 1
  batch_size_recalib: 32
  eval_batches: 1
  eval_batch_size: 32
  channels_last: false
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    meta = {"space": "nb201", "supernet": {"C": 4, "N": 1}, "num_classes": 10}
    torch.manual_seed(1)
    init = build_supernet("nb201", 10, C=4, N=1)
    torch.manual_seed(2)
    final = build_supernet("nb201", 10, C=4, N=1)
    (root / "sn").mkdir()
    torch.save({**meta, "model": init.state_dict()}, root / "sn" / "init.pt")
    torch.save({**meta, "model": final.state_dict()}, root / "sn" / "final.pt")
    (root / "config.yaml").write_text(CONFIG)
    with open(root / "gt.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch", "accuracy"])
        writer.writerows(zip(ARCHS, ACCURACY))
    return root


def _argv(root: Path, out: str, *extra: str) -> list[str]:
    return ["--supernet", str(root / "sn" / "final.pt"), "--config", str(root / "config.yaml"),
            "--ground-truth", str(root / "gt.csv"), "--out", str(root / out), "--archs", "all",
            "--bootstrap", "50", *extra]


def _cached(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for p in sorted((out / "cache").glob(f"{name}-*-r*.jsonl"))
            for line in p.read_text().splitlines()]


def test_alpha_and_gamma_axes_come_from_cached_losses(setup, capsys):
    out = setup / "run"
    assert ablation.main(_argv(setup, "run", "--alpha", "0,1", "--metric", "flatness,accuracy,accuracy+flatness",
                               "--gamma", "0,2")) == 0
    losses = {e["arch"]: e["value"] for e in _cached(out, "losses")}
    accuracy = {e["arch"]: e["value"] for e in _cached(out, "accuracy")}
    assert sorted(losses) == sorted(ARCHS) and sorted(accuracy) == sorted(ARCHS)
    n_lines = len(_cached(out, "losses"))
    assert n_lines == len(ARCHS)  # one setting: the config's sigmas / positions / direction / noise

    # a second run with new alpha and gamma values reuses the cache: no new loss is computed
    assert ablation.main(_argv(setup, "run", "--alpha", "0,0.5,4", "--metric", "accuracy+flatness",
                               "--gamma", "0,0.25,8")) == 0
    assert len(_cached(out, "losses")) == n_lines
    table = json.loads((out / "ablation.json").read_text())["tables"]
    sigmas = [2e-3, 1e-2, 2e-2]
    truth = [ACCURACY[ARCHS.index(a)] for a in ARCHS]
    for row in table["alpha"]["rows"]:
        scores = [flatness_from_losses(losses[a], sigmas, row["setting"]) for a in ARCHS]
        assert row["flatness"]["kendall_tau"][0] == pytest.approx(stats.kendalltau(scores, truth).statistic, abs=1e-12)
        assert row["flatness"]["spearman_rho"][0] == pytest.approx(stats.spearmanr(scores, truth).statistic, abs=1e-12)
        low, high = row["flatness"]["kendall_tau"][1:]
        assert -1 <= low <= high <= 1
    for row in table["gamma"]["rows"]:
        g = row["setting"]
        scores = [accuracy[a] + g * flatness_from_losses(losses[a], sigmas, 1.0) / sigmas[0] for a in ARCHS]
        assert row["accuracy+flatness"]["kendall_tau"][0] == pytest.approx(
            stats.kendalltau(scores, truth).statistic, abs=1e-12)
    # published values sit beside ours (paper Table 6: alpha 0 -> 0.1777, alpha 4 -> 0.5898)
    alpha_md = (out / "alpha.md").read_text()
    assert "paper tau cifar10" in alpha_md and "0.1777" in alpha_md and "0.5898" in alpha_md
    with open(out / "alpha.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["setting"] for r in rows] == ["0", "0.5", "4"] and rows[2]["paper_tau_cifar10"] == "0.5898"
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"


def test_sigma_axis_caches_one_loss_list_per_setting_and_matches_the_scorer(setup):
    out = setup / "sig"
    assert ablation.main(_argv(setup, "sig", "--sigmas", "1e-3,5e-3;2e-3,1e-2,2e-2", "--archs", "sample:4",
                               "--no-plot")) == 0
    result = json.loads((out / "ablation.json").read_text())
    archs = result["archs"]
    assert len(archs) == 4 and set(archs) <= set(ARCHS)
    # the same sample again with the same seed
    assert ablation.choose_archs(ARCHS, "sample:4", 0) == archs
    entries = _cached(out, "losses")
    assert len(entries) == 2 * 4  # two sigma lists (the second is the config's default) x four archs
    lengths = sorted(len(e["value"]) for e in entries)
    assert lengths == [2] * 4 + [3] * 4
    # the cached losses are the scorer's: recompute one architecture directly
    from genas.core.config import load_config
    from genas.data import build_search_data
    from genas.scoring.scorer import ArchScorer
    from genas.train_supernet import load_supernet
    cfg = load_config(setup / "config.yaml")
    data = build_search_data(cfg["data"])
    scorer = ArchScorer(load_supernet(setup / "sn" / "final.pt"), {**cfg["score"], "sigmas": [1e-3, 5e-3]},
                        data.train, data.val, "cpu")
    arch = archs[0]
    direct = scorer(NB201Space().from_string(arch))["losses"]
    cached = next(e["value"] for e in entries if e["arch"] == arch and len(e["value"]) == 2)
    assert cached == pytest.approx(direct, rel=1e-12)
    assert "{0.001, 0.005}" in (out / "sigmas.md").read_text()


def test_nb201_layout_ground_truth_and_metric_axis_with_angle_and_proxies(setup):
    with open(setup / "nb201.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["CIFAR10TestAccuracy200Epochs", "CIFAR100TestAccuracy200Epochs",
                         "ImageNetTestAccuracy200Epochs", "ArchitectureString"])
        writer.writerows([a, a - 20, a - 40, s] for s, a in zip(ARCHS, ACCURACY))
    argv = _argv(setup, "nb", "--metric", "angle,naswot,synflow+flatness", "--no-plot", "--dataset", "cifar100")
    argv[argv.index(str(setup / "gt.csv"))] = str(setup / "nb201.csv")
    assert ablation.main(argv) == 0
    table = json.loads((setup / "nb" / "ablation.json").read_text())["tables"]["metric"]
    angle = {e["arch"]: e["value"] for e in _cached(setup / "nb", "angle")}
    assert all(0 < v < math.pi for v in angle.values())
    truth = [a - 20 for a in ACCURACY]
    expected = stats.kendalltau([angle[a] for a in ARCHS], truth).statistic
    assert table["rows"][0]["setting"] == "angle"
    assert table["rows"][0]["score"]["kendall_tau"][0] == pytest.approx(expected, abs=1e-12)
    assert list((setup / "nb" / "cache").glob("reference-synflow-*.json"))  # the proxy normaliser is cached


@pytest.mark.parametrize("extra, message", [
    (["--sigmas", "2e-2,1e-2"], "strictly increasing"),
    (["--alpha", "-1"], "alpha must be >= 0"),
    (["--metric", "flatness,sharpness"], "--metric"),
    (["--archs", "sample:99", "--alpha", "1"], "sample:99"),
    ([], "no sweep axis"),
    (["--positions", "stem"], "--positions"),
    (["--alpha", "1", "--opts", "score.flatness_eps=-1"], "score.flatness_eps must be a number >= 0"),
    (["--direction", "hessian", "--opts", "score.hessian_iters=0"], "hessian_iters"),
])
def test_bad_options_exit_2_with_one_line_and_write_nothing(setup, extra, message, capsys):
    assert ablation.main(_argv(setup, "bad", *extra)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert not (setup / "bad").exists()


def test_script_reports_a_bad_option_as_one_line_exit_2(setup):
    proc = subprocess.run([sys.executable, str(REPO / "genas" / "ablation.py"),
                           *_argv(setup, "bad", "--gamma", "1,x")], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: --gamma '1,x': expected a comma list of numbers like 0,0.5,1"]
    assert not (setup / "bad").exists()


def test_angle_without_init_checkpoint_is_refused_before_writing(setup, tmp_path):
    (tmp_path / "sn").mkdir()
    (tmp_path / "sn" / "final.pt").write_bytes((setup / "sn" / "final.pt").read_bytes())
    argv = _argv(setup, "x", "--metric", "angle")
    argv[1] = str(tmp_path / "sn" / "final.pt")
    argv[argv.index("--out") + 1] = str(tmp_path / "out")
    assert ablation.main(argv) == 2
    assert not (tmp_path / "out").exists()


def test_shards_are_disjoint_complete_and_cache_merges_ranks(tmp_path):
    items = list(range(11))
    parts = [ablation.shard(items, r, 3) for r in range(3)]
    assert parts[1] == [1, 4, 7, 10] and sorted(sum(parts, [])) == items
    key = {"setting": 1}
    for rank, part in enumerate(parts):
        cache = ablation.LossCache(tmp_path, "losses", key, rank)
        for i in part:
            cache.append(f"a{i}", [float(i)])
    with open(ablation.LossCache(tmp_path, "losses", key, 0).path, "a") as f:
        f.write('{"arch": "a99", "val')  # a line cut by a kill is ignored
    merged = ablation.LossCache(tmp_path, "losses", key, 5).load()
    assert merged == {f"a{i}": [float(i)] for i in items}
    assert ablation.LossCache(tmp_path, "losses", {"setting": 2}, 0).load() == {}


def test_correlation_interval_brackets_the_point_and_nan_ranks_last():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=40)
    scores = truth + rng.normal(scale=0.5, size=40)
    result = ablation.correlation_with_ci(scores, truth, 200, 0)
    point, low, high = result["kendall_tau"]
    assert point == pytest.approx(stats.kendalltau(scores, truth).statistic)
    assert low < point < high
    with_nan = ablation.correlation_with_ci([np.nan, 2.0, 3.0], [0.0, 1.0, 2.0], 0, 0)
    assert with_nan["kendall_tau"] == [1.0, None, None]


def test_two_processes_under_torchrun_write_the_one_process_tables(setup):
    """``torchrun --nproc_per_node 2`` (gloo, CPU): each rank scores its shard r::2 into its own cache files, the
    values are gathered and rank 0 alone writes; every CSV table is the 1-process one to the last digit. (Like
    tests/test_distributed_search.py: ``--standalone`` picks a free port; 1 thread per process, as conftest
    sets for this process, so every float sum is reduced in the same order.)"""
    import os
    axes = ["--sigmas", "1e-3,5e-3;2e-3,1e-2,2e-2", "--alpha", "0,1", "--gamma", "0,2",
            "--metric", "flatness,accuracy,angle,naswot,synflow+flatness", "--no-plot"]
    one, two = setup / "one_proc", setup / "two_proc"
    assert ablation.main(_argv(setup, "one_proc", *axes)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "genas/ablation.py", *_argv(setup, "two_proc", *axes)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("outputs in ") == 1  # rank 0 alone reports (and writes)

    tables = ["sigmas", "alpha", "gamma", "metric"]
    expected = sorted([f"{a}.{ext}" for a in tables for ext in ("md", "csv")] + ["ablation.md", "ablation.json"])
    for out in (one, two):  # one set of tables, no per-rank copies or temporary files
        assert sorted(p.name for p in out.iterdir() if p.is_file()) == expected
        assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["cache"]
    for axis in tables:
        text_one, text_two = (one / f"{axis}.csv").read_text(), (two / f"{axis}.csv").read_text()
        assert len(text_one.splitlines()) > 1 and text_two == text_one, axis
        assert (two / f"{axis}.md").read_text() == (one / f"{axis}.md").read_text()
    json_one, json_two = (json.loads((out / "ablation.json").read_text()) for out in (one, two))
    assert json_two["tables"] == json_one["tables"] and json_two["archs"] == json_one["archs"] == ARCHS

    # the work was split r::2 (3 + 3 architectures per quantity) and the cached values are the 1-process ones
    for name in ("losses", "accuracy", "angle", "naswot", "synflow"):
        for rank in (0, 1):
            files = sorted((two / "cache").glob(f"{name}-*-r{rank}.jsonl"))
            archs = [json.loads(line)["arch"] for p in files for line in p.read_text().splitlines()]
            assert sorted(archs) == sorted(ARCHS[rank::2] * len(files)), (name, rank)
        assert not list((two / "cache").glob(f"{name}-*-r[!01].jsonl"))
        merged_one = sorted((e["arch"], json.dumps(e["value"])) for e in _cached(one, name))
        merged_two = sorted((e["arch"], json.dumps(e["value"])) for e in _cached(two, name))
        assert merged_two == merged_one, name
    assert len(list((two / "cache").glob("reference-synflow-*.json"))) == 1


@pytest.mark.parametrize("metric, options", [("angle+accuracy", {"gamma_acc": 0.3}),
                                             ("flatness", {"flatness_eps": 1e-3}),
                                             ("accuracy+flatness", {"flatness_eps": 1e-3, "gamma": 0.5})])
def test_ablation_scores_combine_parts_exactly_as_the_scorer(setup, metric, options):
    """One combination (genas.scoring.scorer.combine_parts) for the scorer and the ablation: score.gamma_acc and
    score.flatness_eps reach the ablation's values."""
    from genas.core.config import load_config
    from genas.core.io import load_checkpoint
    from genas.data import build_search_data
    from genas.scoring.scorer import ArchScorer
    from genas.train_supernet import load_supernet
    cfg = load_config(setup / "config.yaml")
    data = build_search_data(cfg["data"])
    score = {**cfg["score"], **options, "metric": metric}
    scorer = ArchScorer(load_supernet(setup / "sn" / "final.pt"), score, data.train, data.val, "cpu",
                        init_state_dict=load_checkpoint(setup / "sn" / "init.pt")["model"])
    plain = {**score, "gamma_acc": 1.0, "flatness_eps": 0.0}
    for name in ARCHS[:3]:
        result = scorer(NB201Space().from_string(name))
        parts = {k: result[k] for k in ("angle", "accuracy", "losses") if result[k] is not None}
        value = ablation.score_values(metric, parts, score, {})
        assert value == result["score"]
        assert ablation.score_values(metric, parts, plain, {}) != pytest.approx(value, rel=1e-9)


def test_cache_key_holds_every_score_option_that_changes_a_cached_value():
    from genas.core.config import DEFAULTS
    score = dict(DEFAULTS["score"])
    setting = {k: score[k] for k in ablation.FLATNESS_SETTING_AXES}

    def hashes(**change):
        cfg = {**score, **change}
        return (ablation.LossCache(Path("."), "losses", ablation.cache_key("sha", {"name": "digits"}, cfg, setting)).hash,
                ablation.LossCache(Path("."), "accuracy", ablation.cache_key("sha", {"name": "digits"}, cfg)).hash)

    default = hashes()
    for option, value in (("bn_recal", "reference"), ("loss_mean", "batches"), ("val_order", "file"),
                          ("fresh_draws", True), ("recalib_batches_acc", 3), ("seed", 1)):
        changed = hashes(**{option: value})
        assert changed[0] != default[0] and changed[1] != default[1], option
    for option, value in (("alpha", 4.0), ("gamma", 0.5), ("gamma_acc", 0.3), ("flatness_eps", 1e-5),
                          ("metric", "accuracy")):
        assert hashes(**{option: value}) == default, option  # only the combination of the parts changes
    # the accuracy does not perturb: another default sigma list keeps its cache
    assert hashes(sigmas=[1e-3, 5e-3])[1] == default[1]


def test_plan_resolves_the_device_of_its_local_rank(setup, monkeypatch):
    """Under torchrun ``cuda`` is each rank's LOCAL_RANK GPU (as in genas/search.py)."""
    import genas.core.distributed as distributed
    calls = []

    def fake(name="auto", local_rank=0):
        calls.append((name, local_rank))
        return torch.device("cpu")

    monkeypatch.setattr(distributed, "resolve_device", fake)
    monkeypatch.setenv("LOCAL_RANK", "1")
    args = ablation._parser().parse_args(_argv(setup, "lr", "--alpha", "1", "--device", "cuda"))
    plan = ablation._Plan(args)
    assert calls == [("cuda", 1)] and plan.device == torch.device("cpu")
    assert not (setup / "lr").exists()


def test_unreadable_supernet_checkpoint_is_one_line_exit_2(setup, tmp_path, capsys):
    (tmp_path / "sn").mkdir()
    (tmp_path / "sn" / "final.pt").write_bytes(b"not a checkpoint" * 8)
    argv = _argv(setup, "x", "--alpha", "1")
    argv[1] = str(tmp_path / "sn" / "final.pt")
    argv[argv.index("--out") + 1] = str(tmp_path / "out")
    assert ablation.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "final.pt" in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bn_recal", ["exact", "reference"])
def test_naswot_plus_flatness_takes_naswot_in_the_one_recalibration_with_bn_recal(setup, bn_recal):
    """scorer.py: naswot+flatness measures naswot inside the flatness's BN recalibration (score.bn_recal mode),
    the same value as the naswot metric alone with that mode."""
    from genas.core.config import load_config
    from genas.data import build_search_data
    from genas.scoring.scorer import ArchScorer
    from genas.train_supernet import load_supernet
    cfg = load_config(setup / "config.yaml")
    data = build_search_data(cfg["data"])
    supernet = load_supernet(setup / "sn" / "final.pt")
    score = {**cfg["score"], "bn_recal": bn_recal}
    both = ArchScorer(supernet, {**score, "metric": "naswot+flatness"}, data.train, data.val, "cpu")
    alone = ArchScorer(supernet, {**score, "metric": "naswot"}, data.train, data.val, "cpu")
    exact = ArchScorer(supernet, {**score, "bn_recal": "exact", "metric": "naswot"}, data.train, data.val, "cpu")
    values = []
    for name in ARCHS[:3]:
        arch = NB201Space().from_string(name)
        result = both(arch)
        assert result["naswot"] == pytest.approx(alone(arch)["naswot"], rel=1e-9)
        assert result["naswot"] == pytest.approx(alone.proxy_value(arch), rel=1e-9)
        values.append((result["naswot"], exact(arch)["naswot"]))
    if bn_recal == "reference":  # the mode reaches naswot's recalibration
        assert any(v != pytest.approx(e, rel=1e-9) for v, e in values)
