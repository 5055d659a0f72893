"""genas/nb201_eval.py: rank correlations and the pick's quality, on hand-made tables and the real benchmark CSV."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from genas.evolution import Search, SearchSettings
from genas.nb201_eval import main
from genas.search import write_rows_csv, write_scores_csv
from genas.spaces.nb201 import NB201Space, enumerate_archs

REPO = Path(__file__).resolve().parents[1]
GT_FIELDS = ["CIFAR10TestAccuracy200Epochs", "CIFAR100TestAccuracy200Epochs", "ImageNetTestAccuracy200Epochs",
             "ArchitectureString", "UniqueString"]
ARCHS = ["|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
         "|skip_connect~0|+|none~0|none~1|+|none~0|none~1|none~2|",
         "|nor_conv_1x1~0|+|none~0|none~1|+|none~0|none~1|none~2|",
         "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"]


def _ground_truth(path: Path, accuracies: list[float]) -> Path:
    write_rows_csv(path, [{"CIFAR10TestAccuracy200Epochs": a, "CIFAR100TestAccuracy200Epochs": 0.0,
                           "ImageNetTestAccuracy200Epochs": 0.0, "ArchitectureString": arch, "UniqueString": ""}
                          for arch, a in zip(ARCHS, accuracies)], GT_FIELDS)
    return path


def _scores(path: Path, pairs) -> Path:
    write_rows_csv(path, [{"arch": a, "score": s} for a, s in pairs], ["arch", "score"])
    return path


def test_hand_computed_tau_rho_and_pick(tmp_path, capsys):
    # scores rank the archs 1 < 2 < 3 < 4; accuracies rank them 1 < 2 < 4 < 3: one discordant pair of six,
    # tau = (5 - 1) / 6; squared rank differences 0 + 0 + 1 + 1, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    gt = _ground_truth(tmp_path / "gt.csv", [10.0, 20.0, 40.0, 30.0])
    scores = _scores(tmp_path / "scores.csv", zip(ARCHS, [0.1, 0.2, 0.3, 0.4]))
    out = tmp_path / "eval.json"
    assert main(["--scores", str(scores), "--ground-truth", str(gt), "--dataset", "CIFAR10", "--topk", "1", "2",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["kendall_tau"] == pytest.approx(4 / 6)
    assert result["spearman_rho"] == pytest.approx(0.8)
    assert result["pick"] == {"arch": ARCHS[3], "score": 0.4, "test_accuracy": 30.0, "rank": 2, "percentile": 50.0}
    assert result["topk_best_accuracy"] == {"1": 30.0, "2": 40.0}
    assert "Kendall tau   0.6667" in capsys.readouterr().out


def test_unjoined_archs_are_an_error_and_nothing_is_written(tmp_path, capsys):
    gt = _ground_truth(tmp_path / "gt.csv", [10.0, 20.0, 40.0, 30.0])
    scores = _scores(tmp_path / "scores.csv", [(ARCHS[0], 1.0), ("|conv~0|+|x~0|y~1|+|a~0|b~1|c~2|", 2.0),
                                                ("nonsense", 3.0)])
    out = tmp_path / "eval.json"
    assert main(["--scores", str(scores), "--ground-truth", str(gt), "--dataset", "cifar10", "--out", str(out)]) == 2
    assert "2 of 3 scored architectures did not join" in capsys.readouterr().err
    assert not out.exists()


def test_a_non_numeric_ground_truth_cell_is_one_line_naming_file_and_line(tmp_path, capsys):
    gt = _ground_truth(tmp_path / "gt.csv", [10.0, 20.0, 40.0, 30.0])
    gt.write_text(gt.read_text().replace("40.0", "n/a"))
    scores = _scores(tmp_path / "scores.csv", zip(ARCHS, [0.1, 0.2, 0.3, 0.4]))
    assert main(["--scores", str(scores), "--ground-truth", str(gt), "--dataset", "cifar10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{gt}, line 4: CIFAR10TestAccuracy200Epochs 'n/a' is not a number" in err


def _read_gt(path: Path, column: str) -> list[tuple[str, float]]:
    with open(path, newline="") as f:
        return [(r["ArchitectureString"], float(r[column])) for r in csv.DictReader(f)]


def test_benchmark_ground_truth_gives_tau_one_and_reversed_minus_one(nb201_csv, tmp_path):
    truth = _read_gt(nb201_csv, "CIFAR10TestAccuracy200Epochs")
    assert len(truth) == 15625
    best_acc, worst_acc = max(a for _, a in truth), min(a for _, a in truth)
    assert truth[6111][1] == best_acc == pytest.approx(94.3733, abs=1e-4)  # the data README's maximum
    below_best = sum(a < best_acc for _, a in truth)  # 15,623: two cells share the best accuracy
    for sign, tau, pick_acc, percentile in ((1.0, 1.0, best_acc, 100 * below_best / 15625),
                                            (-1.0, -1.0, worst_acc, 0.0)):
        scores = _scores(tmp_path / "scores.csv", [(a, sign * acc) for a, acc in truth])
        out = tmp_path / "eval.json"
        assert main(["--scores", str(scores), "--ground-truth", str(nb201_csv), "--dataset", "cifar10",
                     "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["num_joined"] == 15625
        assert result["kendall_tau"] == pytest.approx(tau, abs=1e-12)
        assert result["spearman_rho"] == pytest.approx(tau, abs=1e-12)
        assert result["pick"]["test_accuracy"] == pick_acc
        assert result["pick"]["percentile"] == pytest.approx(percentile)
    assert result["topk_best_accuracy"]["10"] < 11.0  # the ten worst cells barely learn


def test_exhaustive_search_scores_join_all_15625(nb201_csv, tmp_path):
    """The search's own scores.csv (exhaustive, one row per arch string) joins the benchmark completely;
    the score is the number of 3x3 convs in the cell, which must correlate positively with accuracy."""
    space = NB201Space()
    outcome = Search(space, lambda a: {"score": float(space.key(a).count("nor_conv_3x3"))},
                     SearchSettings(algorithm="exhaustive", topk=5), progress=False).run()
    scores = tmp_path / "scores.csv"
    assert write_scores_csv(scores, space, outcome, sigmas=[], all_archs=enumerate_archs()) == 15625
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "genas/nb201_eval.py", "--scores", str(scores), "--ground-truth",
                           str(nb201_csv), "--dataset", "cifar10", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["num_joined"] == 15625
    assert 0.2 < result["kendall_tau"] < 1.0
    assert result["pick"]["arch"] == space.to_string(outcome.best_arch)
