"""``python genas/search.py`` end to end on a tiny real run (digits, a 1-epoch NB201 supernet, 2 iterations),
and its refusals of bad input (non-zero exit, clear message, nothing written)."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genas.core.results import read_result
from genas.evolution import Search, SearchSettings
from genas.search import main, write_best_genotype
from genas.spaces.darts import EDGES_PER_CELL, DartsSpace, decode
from genas.spaces.nb201 import NB201Space, build_network

REPO = Path(__file__).resolve().parents[1]
SIGMAS = [2e-3, 1e-2, 2e-2]
TINY = {
    "space": "nb201",
    "supernet": {"C": 4, "N": 1},
    "data": {"name": "digits"},
    "train": {"epochs": 1, "batch_size": 64, "workers": 0, "device": "cpu"},
    "score": {"metric": "flatness", "sigmas": SIGMAS, "recalib_batches": 1, "batch_size_recalib": 64,
              "eval_batches": 1, "eval_batch_size": 64},
    "search": {"population": 4, "topk": 2, "mutation_num": 2, "crossover_num": 2, "iterations": 2},
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(tmp_path: Path, cfg: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _flatness(losses: list[float], sigmas: list[float], alpha: float = 1.0) -> float:
    """Paper Eq. 4, recomputed here from the logged losses."""
    slopes = sum(abs((losses[i + 1] - losses[i]) / (sigmas[i + 1] - sigmas[i])) for i in range(len(sigmas) - 1))
    return 1.0 / (slopes + alpha * abs(losses[0] / sigmas[0]))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny search (supernet trained inside it), shared by the checks below."""
    tmp = tmp_path_factory.mktemp("search")
    out = tmp / "out"
    rc = main(["--config", str(_config(tmp, TINY)), "--out", str(out), "--no-progress"])
    assert rc == 0
    return tmp, out


def test_search_writes_every_output_with_consistent_content(finished_run):
    _, out = finished_run
    space = NB201Space()
    for name in ("best_genotype.json", "topk.csv", "search_log.csv", "scores.csv", "best_score.png", "cell.png",
                 "summary.json", "config.yaml", "search_state.json", "supernet/final.pt", "supernet/init.pt"):
        assert (out / name).is_file(), name
    for png in ("best_score.png", "cell.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC

    scores = _csv(out / "scores.csv")
    loss_columns = ["loss_sigma_0.002", "loss_sigma_0.01", "loss_sigma_0.02"]
    assert list(scores[0])[:6] == ["arch", "key", "score", *loss_columns]
    assert 4 < len(scores) <= 8 and len({r["key"] for r in scores}) == len(scores)
    for row in scores:  # the score is Eq. 4 of the logged losses; params are the standalone network's
        losses = [float(row[c]) for c in loss_columns]
        assert float(row["score"]) == pytest.approx(_flatness(losses, SIGMAS), rel=1e-9)
        net = build_network(row["arch"], num_classes=10)
        assert int(row["params"]) == sum(p.numel() for p in net.parameters())
        assert row["key"] == ",".join(map(str, space.from_string(row["arch"])))  # search.dedupe: exact
    ranked = [float(r["score"]) for r in scores]
    assert ranked == sorted(ranked, reverse=True)

    best = json.loads((out / "best_genotype.json").read_text())
    assert best["space"] == "nb201" and best["metric"] == "flatness"
    assert best["arch"] == scores[0]["arch"] and best["score"] == pytest.approx(ranked[0])

    topk = _csv(out / "topk.csv")
    assert [r["rank"] for r in topk] == ["1", "2"] and [r["arch"] for r in topk] == [r["arch"] for r in scores[:2]]

    history = _csv(out / "search_log.csv")
    assert [int(h["iteration"]) for h in history] == [1, 2]
    assert int(history[0]["evaluated"]) == 4 and int(history[1]["evaluated"]) == len(scores)
    assert float(history[-1]["best_score"]) == pytest.approx(ranked[0])
    assert float(history[-1]["mean_topk_score"]) == pytest.approx(sum(ranked[:2]) / 2)

    summary = read_result(out / "summary.json")
    assert summary["kind"] == "search" and summary["model"] == best["arch"]
    assert summary["metrics"]["score"] == pytest.approx(ranked[0])
    meta = summary["meta"]
    assert meta["arch"] == best["arch"] and meta["metric"] == "flatness" and meta["space"] == "nb201"
    assert meta["num_evaluations"] == len(scores) and meta["num_nonfinite"] == 0
    assert meta["params_m"] == pytest.approx(int(scores[0]["params"]) / 1e6)
    assert meta["search_seconds"] > 0 and meta["supernet_seconds"] > 0 and len(meta["supernet_sha256"]) == 64
    assert meta["world_size"] == 1 and meta["evaluations_per_rank"] == [len(scores)]


def test_rerun_needs_resume_and_resume_reuses_everything(finished_run, capsys):
    tmp, out = finished_run
    config = str(_config(tmp, TINY))
    before = (out / "scores.csv").read_text()
    assert main(["--config", config, "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    # a finished search resumed: the supernet and every score are reused, the outputs are identical
    assert main(["--config", config, "--out", str(out), "--no-progress", "--resume"]) == 0
    assert (out / "scores.csv").read_text() == before
    assert "best architecture" in capsys.readouterr().out
    # resuming with another metric would mix scores: refused, and the old outputs are kept
    assert main(["--config", config, "--out", str(out), "--no-progress", "--resume", "--alpha", "0.5"]) == 2
    assert "different search" in capsys.readouterr().err
    assert (out / "scores.csv").read_text() == before


def test_given_supernet_and_angle_metric(finished_run):
    tmp, out = finished_run
    other = tmp / "angle"
    rc = main(["--config", str(_config(tmp, TINY)), "--out", str(other), "--no-progress", "--metric", "angle",
               "--supernet", str(out / "supernet" / "final.pt"), "--opts", "search.iterations=1"])
    assert rc == 0
    assert not (other / "supernet").exists()  # nothing trained
    for row in _csv(other / "scores.csv"):
        angle = float(row["angle"])
        assert 0 < angle < math.pi and float(row["score"]) == pytest.approx(angle / math.pi)
        assert not any(c.startswith("loss_sigma_") for c in row)  # angle alone perturbs nothing
    summary = read_result(other / "summary.json")
    assert summary["meta"]["metric"] == "angle" and summary["meta"]["supernet_seconds"] is None
    assert summary["meta"]["supernet_val_accuracy"]["num_paths"] == 10  # the default check ran


def test_val_paths_zero_skips_the_path_accuracy_check(finished_run, capsys):
    tmp, out = finished_run
    other = tmp / "no_val"
    assert main(["--config", str(_config(tmp, TINY)), "--out", str(other), "--no-progress", "--metric", "angle",
                 "--supernet", str(out / "supernet" / "final.pt"),
                 "--opts", "search.iterations=1", "train.val_paths=0"]) == 0
    assert read_result(other / "summary.json")["meta"]["supernet_val_accuracy"] is None
    printed = capsys.readouterr().out
    assert "sampled paths" not in printed
    assert "M params as the C=16, N=5 benchmark network" in printed  # the size is the standalone network's


def test_isomorphic_dedupe_keys_by_class(finished_run):
    tmp, out = finished_run
    other = tmp / "isomorphic"
    assert main(["--config", str(_config(tmp, TINY)), "--out", str(other), "--no-progress", "--supernet",
                 str(out / "supernet" / "final.pt"), "--opts", "search.dedupe=isomorphic"]) == 0
    space = NB201Space()
    rows = _csv(other / "scores.csv")
    assert rows and all(space.key(space.from_string(r["arch"])) == r["key"] for r in rows)
    assert len({r["key"] for r in rows}) == len(rows)


def test_darts_best_genotype_json_builds_a_backbones_network(tmp_path):
    import timm
    import backbones  # noqa: F401  (registers the DARTS timm models)
    space = DartsSpace()
    outcome = Search(space, lambda a: {"score": float(sum(g == 5 for g in a[EDGES_PER_CELL:]))},
                     SearchSettings(population=6, topk=2, mutation_num=2, crossover_num=2, iterations=2),
                     progress=False).run()
    path = tmp_path / "best_genotype.json"
    write_best_genotype(path, space, outcome, "flatness")
    model = timm.create_model("darts_cifar", genotype=str(path), C=4, layers=3, num_classes=10)
    assert model.genotype == decode(outcome.best_arch)
    assert json.loads(path.read_text())["score"] == outcome.best_score


@pytest.mark.parametrize("change, args, message", [
    ({"search": {"popsize": 3}}, [], "unknown config key 'search.popsize'"),
    ({}, ["--sigmas", "2e-3,abc"], "comma list"),
    ({}, ["--algorithm", "bayes"], "search.algorithm"),
    ({"search": {**TINY["search"], "topk": 0}}, [], "search.topk must be >= 1"),
    ({"space": "darts", "supernet": {"C": 4, "layers": 2}}, ["--algorithm", "exhaustive"], "exhaustive"),
    ({}, ["--device", "tpu"], "train.device"),
    ({}, ["--opts", "search.dedupe=fuzzy"], "search.dedupe must be one of"),
    ({}, ["--opts", "train.val_paths=-1"], "train.val_paths must be >= 0"),
])
def test_bad_input_exits_nonzero_and_writes_nothing(tmp_path, capsys, change, args, message):
    out = tmp_path / "out"
    assert main(["--config", str(_config(tmp_path, {**TINY, **change})), "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_script_missing_supernet_exits_2_with_message(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "genas/search.py", "--config", str(_config(tmp_path, TINY)),
                           "--out", str(out), "--supernet", str(tmp_path / "missing.pt")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "missing.pt: file not found" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
