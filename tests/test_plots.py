"""genas.plots: cell graphs match their genotype edge by edge, every figure is a real image, inputs are checked.

Cell edges are written out by hand from the genotypes of genas/genotypes.py (paper Fig. 5 for the GeNAS
flatness cell); the top/middle/bottom picks and the loss-column order are worked out by hand too.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from conftest import assert_png
from genas import plots
from genas.nb201_eval import read_ground_truth_column
from genas.spaces.darts.published import GENAS_FLATNESS_CIFAR100
from genas.core.results import write_result
from genas.spaces.darts import encode, format_genotype, genotype_to_json

K2, K1, OUT = r"$c_{k-2}$", r"$c_{k-1}$", r"$c_{k}$"
NB201_ARCH = "|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|"


def op_edges(graph) -> dict[tuple[str, str], str]:
    return {(u, v): op for u, v, op in graph.edges(data="op") if op is not None}


# ------------------------------------------------------------------------------------------ cell graphs
def test_darts_cell_graphs_follow_the_genotype():
    (normal_title, normal), (reduce_title, reduce) = plots.cell_graphs("genas_flatness_cifar100")
    assert (normal_title, reduce_title) == ("Normal cell", "Reduction cell")
    # normal: skip_connect 0, sep_conv_5x5 1 | sep_conv_3x3 1, sep_conv_3x3 2 | sep_conv_3x3 2, sep_conv_5x5 3 |
    #         sep_conv_3x3 1, dil_conv_5x5 4   (state 0 = c_{k-2}, 1 = c_{k-1}, 2..5 = nodes 0..3)
    assert op_edges(normal) == {
        (K2, "0"): "skip_connect", (K1, "0"): "sep_conv_5x5",
        (K1, "1"): "sep_conv_3x3", ("0", "1"): "sep_conv_3x3",
        ("0", "2"): "sep_conv_3x3", ("1", "2"): "sep_conv_5x5",
        (K1, "3"): "sep_conv_3x3", ("2", "3"): "dil_conv_5x5",
    }
    assert op_edges(reduce) == {
        (K2, "0"): "dil_conv_3x3", (K1, "0"): "skip_connect",
        (K2, "1"): "avg_pool_3x3", ("0", "1"): "sep_conv_5x5",
        (K1, "2"): "sep_conv_5x5", ("1", "2"): "dil_conv_5x5",
        (K1, "3"): "max_pool_3x3", ("0", "3"): "max_pool_3x3",
    }
    for graph in (normal, reduce):  # the output concatenates the four intermediate nodes
        assert sorted(u for u, v, op in graph.edges(data="op") if op is None) == ["0", "1", "2", "3"]
        assert set(graph.predecessors(OUT)) == {"0", "1", "2", "3"}


def test_nb201_cell_graph_omits_none_edges():
    [(title, graph)] = plots.cell_graphs(NB201_ARCH)
    assert title == "NAS-Bench-201 cell"
    assert op_edges(graph) == {("0", "1"): "nor_conv_3x3", ("1", "2"): "avg_pool_3x3",
                               ("0", "3"): "skip_connect", ("2", "3"): "nor_conv_1x1"}
    assert sorted(graph.nodes) == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="no searched reduction cell"):
        plots.cell_graphs(NB201_ARCH, cell="reduce")


def test_every_architecture_form_reads_the_same(tmp_path):
    genotype_json = genotype_to_json(GENAS_FLATNESS_CIFAR100)
    (tmp_path / "best_genotype.json").write_text(json.dumps({"space": "darts", "genotype": genotype_json}))
    summary = write_result(tmp_path / "summary.json", "search", "search-x", {"score": 1.0}, metric="flatness",
                           space="darts", genotype=genotype_json)
    forms = ["GENAS_FLATNESS_CIFAR100", GENAS_FLATNESS_CIFAR100, format_genotype(GENAS_FLATNESS_CIFAR100),
             genotype_json, {"genotype": genotype_json}, json.dumps(genotype_json),
             list(encode(GENAS_FLATNESS_CIFAR100)),
             tmp_path / "best_genotype.json", str(summary)]
    expected = encode(GENAS_FLATNESS_CIFAR100)
    for form in forms:
        space, genotype = plots.read_architecture(form)
        assert space == "darts" and encode(genotype) == expected, form
    nb201_summary = write_result(tmp_path / "nb.json", "search", NB201_ARCH, {"score": 1.0}, space="nb201",
                                 arch=NB201_ARCH)
    for form in (NB201_ARCH, (3, 0, 4, 1, 0, 2), {"space": "nb201", "arch": NB201_ARCH}, nb201_summary):
        assert plots.read_architecture(form) == ("nb201", (3, 0, 4, 1, 0, 2)), form


def test_bad_architectures_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="unknown genotype name 'no_such_cell'"):
        plots.read_architecture("no_such_cell")
    with pytest.raises(ValueError, match="unknown op 'conv_9x9'"):
        plots.read_architecture("|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(ValueError, match=r"empty\.json: no architecture found"):
        plots.read_architecture(tmp_path / "empty.json")
    (tmp_path / "broken.json").write_text('{"schema": "genas-result/1", "kind": "search"')
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        plots.read_architecture(tmp_path / "broken.json")


def test_cell_layout_runs_left_to_right():
    """Inputs in the first column, c_k alone in the last, every edge pointing right (paper Figs. 5-7)."""
    for name in ("genas_flatness_cifar100", "darts_v2", "dropnas", "sdarts_adv"):
        for _, graph in plots.cell_graphs(name):
            pos = plots._layout_cell(graph).pos
            assert pos[K2][0] == pos[K1][0] == min(p[0] for p in pos.values())
            assert pos[OUT][0] > max(p[0] for n, p in pos.items() if n != OUT)
            assert all(pos[u][0] < pos[v][0] for u, v in graph.edges)


# ------------------------------------------------------------------------------------------ figures
def test_plot_cell_writes_png_and_svg(tmp_path):
    both = assert_png(plots.plot_cell("genas_flatness_cifar100", tmp_path / "cell.png"))
    normal = assert_png(plots.plot_cell("genas_flatness_cifar100", tmp_path / "normal.png", cell="normal"))
    assert both.shape[0] > 1.5 * normal.shape[0]  # 'both' stacks two cells
    assert_png(plots.plot_cell(NB201_ARCH, tmp_path / "nb201.png"), min_side=150)
    svg = plots.plot_cell("dropnas", tmp_path / "cell.svg", cell="reduce").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    with pytest.raises(ValueError, match=r"suffix must be one of"):
        plots.plot_cell("dropnas", tmp_path / "cell.jpg")
    assert not (tmp_path / "cell.jpg").exists()


def test_best_score_curve_from_csv_rows_and_numbers(tmp_path):
    log = tmp_path / "search_log.csv"
    log.write_text("iteration,best_score,mean_topk_score,evaluated,elapsed_s\n"
                   "1,-inf,-inf,50,1.0\n2,0.41,0.30,100,2.0\n3,0.52,0.44,150,3.0\n")
    assert_png(plots.plot_best_score(log, tmp_path / "a.png"))
    iterations, best, mean = plots._read_history(log)
    assert iterations.tolist() == [1, 2, 3]
    assert np.isnan(best[0]) and best[1:].tolist() == [0.41, 0.52]  # -inf (all diverged) is not drawn
    assert mean[1:].tolist() == [0.30, 0.44]
    rows = [{"iteration": 1, "best_score": 0.2}, {"iteration": 2, "best_score": 0.3}]
    assert_png(plots.plot_best_score(rows, tmp_path / "b.png"))
    assert_png(plots.plot_best_score([0.1, 0.15, 0.15], tmp_path / "c.png"))
    with pytest.raises(ValueError, match="empty"):
        plots.plot_best_score([], tmp_path / "d.png")
    with pytest.raises(ValueError, match="no finite best score"):
        plots.plot_best_score([float("-inf")], tmp_path / "e.png")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"other\.csv: no 'best_score' column"):
        plots.plot_best_score(tmp_path / "other.csv", tmp_path / "f.png")


def write_scores(path: Path, rows: list[tuple[str, str, float, list]]) -> Path:
    """A scores.csv like genas/search.py writes, with the loss columns deliberately out of sigma order."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "key", "score", "loss_sigma_0.02", "loss_sigma_0.002", "loss_sigma_0.01", "flatness"])
        for arch, key, score, (l1, l2, l3) in rows:
            w.writerow([arch, key, score, l3, l1, l2, ""])
    return path


NB201_ARCHS = [  # 10 NB201 arch strings: all-skip with one op swapped in on edge 3<-2
    f"|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|{op}~2|"
    for op in ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
] + [
    f"|{op}~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
    for op in ("none", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
] + ["|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"]


def test_read_loss_curves_orders_by_sigma_and_drops_diverged(tmp_path):
    scores = write_scores(tmp_path / "scores.csv", [
        ("a", "ka", 2.0, [0.5, 0.6, 0.9]),
        ("b", "kb", float("-inf"), [float("nan"), 1.0, 2.0]),
        ("c", "kc", 1.0, ["", "", ""]),
    ])
    sigmas, curves = plots.read_loss_curves(scores)
    assert sigmas == [0.002, 0.01, 0.02]
    assert curves == [{"arch": "a", "key": "ka", "score": 2.0, "losses": [0.5, 0.6, 0.9]}]
    with pytest.raises(ValueError, match="3 loss columns but 2 sigmas"):
        plots.read_loss_curves(scores, sigmas=[1e-3, 2e-3])


def test_top_middle_bottom_picks():
    assert plots.pick_top_middle_bottom(list(range(10)), 3) == {"top": [0, 1, 2], "middle": [3, 4, 5],
                                                                  "bottom": [7, 8, 9]}
    assert plots.pick_top_middle_bottom(list("abcdefg"), 2) == {"top": ["a", "b"], "middle": ["c", "d"],
                                                                "bottom": ["f", "g"]}
    with pytest.raises(ValueError, match="at least 9 architectures"):
        plots.pick_top_middle_bottom(list(range(8)), 3)


def test_curvature_picks_by_ground_truth_once_per_class(tmp_path):
    # scores ascend with the index, ground truth descends; archs 8 and 9 share key "k8" (isomorphic)
    rows = [(a, f"k{min(i, 8)}", float(i), [0.1 * i + 0.1, 0.1 * i + 0.2, 0.1 * i + 0.4])
            for i, a in enumerate(NB201_ARCHS)]
    scores = write_scores(tmp_path / "scores.csv", rows)
    gt = tmp_path / "nb201.csv"
    with open(gt, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["CIFAR10TestAccuracy200Epochs", "CIFAR100TestAccuracy200Epochs", "ImageNetTestAccuracy200Epochs",
                    "ArchitectureString", "UniqueString"])
        for i, a in enumerate(NB201_ARCHS):
            w.writerow([90.0 - i, 70.0, 40.0, a, ""])
    sigmas, curves = plots.read_loss_curves(scores)
    truth = read_ground_truth_column(gt, "CIFAR10TestAccuracy200Epochs")
    picked = [(group, c["key"], value) for group, c, value in plots.select_curves(curves, truth=truth, k=3)]
    # 9 classes ranked by truth (k9's member arch 9 merges into k8, whose best member has 82.0)
    assert picked == [("top", "k0", 90.0), ("top", "k1", 89.0), ("top", "k2", 88.0),
                      ("middle", "k3", 87.0), ("middle", "k4", 86.0), ("middle", "k5", 85.0),
                      ("bottom", "k6", 84.0), ("bottom", "k7", 83.0), ("bottom", "k8", 82.0)]
    by_score = [(group, c["key"]) for group, c, _ in plots.select_curves(curves, k=2)]
    assert by_score == [("top", "k8"), ("top", "k7"), ("middle", "k5"), ("middle", "k4"),
                        ("bottom", "k1"), ("bottom", "k0")]
    assert_png(plots.plot_loss_curvature(scores, tmp_path / "gt.png", ground_truth_csv=gt, k=3))
    assert_png(plots.plot_loss_curvature(scores, tmp_path / "score.png", k=2))
    assert_png(plots.plot_loss_curvature(scores, tmp_path / "chosen.png", archs=["k0", NB201_ARCHS[5]]))
    with pytest.raises(ValueError, match=r"no finite losses for \['nope'\]"):
        plots.plot_loss_curvature(scores, tmp_path / "x.png", archs=["nope"])


def test_curvature_with_the_real_nb201_table(tmp_path, nb201_csv):
    with open(nb201_csv, newline="") as f:
        table = [(r["ArchitectureString"], float(r["CIFAR100TestAccuracy200Epochs"]))
                 for _, r in zip(range(12), csv.DictReader(f))]
    rows = [(a, str(i), 0.0, [1.0, 1.1, 1.3]) for i, (a, _) in enumerate(table)]
    scores = write_scores(tmp_path / "scores.csv", rows)
    _, curves = plots.read_loss_curves(scores)
    truth = read_ground_truth_column(nb201_csv, "CIFAR100TestAccuracy200Epochs")
    top = [c["arch"] for group, c, _ in plots.select_curves(curves, truth=truth, k=3) if group == "top"]
    assert top == [a for a, _ in sorted(table, key=lambda t: -t[1])[:3]]
    assert_png(plots.plot_loss_curvature(scores, tmp_path / "fig2.png", ground_truth_csv=nb201_csv,
                                         gt_column="CIFAR100TestAccuracy200Epochs"))


def test_cli(tmp_path, capsys):
    assert plots.main(["cell", "genas_flatness_cifar100", "--out", str(tmp_path / "c.png"), "--cell", "normal"]) == 0
    assert_png(tmp_path / "c.png")
    assert plots.main(["cell", "not_a_cell", "--out", str(tmp_path / "bad.png")]) == 2
    assert "unknown genotype name 'not_a_cell'" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()
