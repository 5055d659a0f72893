"""report (python -m report): the table from generated result files, exact to the digit; published rows kept apart;
bad inputs stop the report before anything is written.

resnet18's parameter count and MACs at 224x224 are counted independently of the report when the test runs (parameter
sizes, and a forward-hook count of every Conv2d / Linear with the textbook formula) and compared with the report's.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image
import pytest
import timm
import torch
from torch import nn

from genas.spaces.darts.published import GENAS_FLATNESS_CIFAR100
from genas.core.results import write_result
from genas.spaces.darts import genotype_to_json
from report import table as report
from report.plots import plot_metric_bars

from conftest import assert_png

NB201_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
HEADER = ["model", "source", "search_metric", "params_m", "macs_g", "imagenet_top1", "imagenet_ece",
          "imagenet_real_top1", "imagenet_v2_top1", "imagenet_a_top1", "imagenet_r_top1", "imagenet_sketch_top1",
          "imagenet_c_mce", "imagenet_o_aupr", "coco_ap", "cityscapes_miou"]



@pytest.fixture
def results(tmp_path: Path) -> Path:
    """Three models across every kind, plus files a real run folder holds that are not results."""
    root = tmp_path / "results"
    genas = "genas_flatness_cifar100"  # a published genotype name: the search result links to it by genotype
    write_result(root / "robustness" / "in.json", "robustness", genas, {"top1": 76.054, "top5": 92.6, "ece": 3.125,
                 "nll": 0.95}, set="imagenet", params_m=5.2, macs_g=0.58)
    write_result(root / "robustness" / "real.json", "robustness", genas, {"real_top1": 83.2, "top1": 76.0},
                 set="imagenet-real")
    write_result(root / "robustness" / "r.json", "robustness", genas, {"top1": 38.5, "top5": 55.0}, set="imagenet-r")
    write_result(root / "robustness" / "c.json", "robustness", genas, {"mce": 68.125, "error/fog/1": 30.0},
                 set="imagenet-c")
    write_result(root / "robustness" / "v2.json", "robustness", genas, {"top1": 63.38, "top5": 84.0}, set="imagenet-v2")
    write_result(root / "robustness" / "a.json", "robustness", genas, {"top1": 5.65, "top5": 20.0}, set="imagenet-a")
    write_result(root / "robustness" / "o.json", "robustness", genas, {"aupr": 17.25, "auroc": 60.0, "fpr95": 90.0},
                 set="imagenet-o")
    write_result(root / "det" / "result.json", "detection", genas, {"AP": 37.05, "AP50": 56.1}, params_m=33.0)
    write_result(root / "seg" / "result.json", "segmentation", genas, {"mIoU": 72.58, "mAcc": 80.0})
    write_result(root / "train" / "r18.json", "imagenet", "resnet18", {"top1": 69.758})
    write_result(root / "robustness" / "r18_a.json", "robustness", "resnet18", {"top1": 1.1, "top5": 4.0},
                 set="imagenet-a")
    write_result(root / "search" / "summary.json", "search", "search-c100", {"score": 0.81}, metric="flatness",
                 space="darts", genotype=genotype_to_json(GENAS_FLATNESS_CIFAR100), params_m=3.3)
    write_result(root / "nb" / "summary.json", "search", NB201_ARCH, {"score": 1.5}, metric="angle", space="nb201",
                 arch=NB201_ARCH, params_m=1.0733)
    (root / "det" / "metrics.json").write_text('{"iteration": 19}\n{"iteration": 39}\n')  # Detectron2 JSON lines
    (root / "search" / "best_genotype.json").write_text(json.dumps({"space": "darts"}))
    return root


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_report_rows_columns_and_values(results, tmp_path):
    out = tmp_path / "report"
    assert report.main(["--results", str(results), "--out", str(out)]) == 0
    rows = read_csv(out / "report.csv")
    assert rows[0] == HEADER
    assert rows[1:] == [
        # params/MACs from the robustness meta (not the detector's 33 M); search metric via the genotype
        ["genas_flatness_cifar100", "measured", "flatness", "5.2", "0.58", "76.054", "3.125", "83.2", "63.38", "5.65",
         "38.5", "—", "68.125", "17.25", "37.05", "72.58"],
        # params by building the timm model (MACs only with --compute-macs); top-1 from the 'imagenet' kind
        ["resnet18", "measured", "—", "11.6895", "—", "69.758", "—", "—", "—", "1.1", "—", "—", "—", "—", "—", "—"],
        # a search with no evaluation: its own row, the searched network's size
        [NB201_ARCH, "measured", "angle", "1.0733", "—", *["—"] * 11],
    ]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert ("| genas_flatness_cifar100 | flatness | 5.20 | 0.58 | 76.05 | 3.12 | 83.20 | 63.38 | 5.65 | 38.50 | — | "
            "68.12 | 17.25 | 37.05 | 72.58 |") in md
    assert "| resnet18 | — | 11.69 | — | 69.76 | — | — | — | 1.10 | — | — | — | — | — | — |" in md
    assert "| ImageNet ECE ↓ |" in md and "| ImageNet-C mCE ↓ |" in md and "↓ = lower is better" in md
    assert "Published" not in md
    png = out / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert min(image.shape[:2]) > 300 and image[..., :3].std() > 0.01


def count_by_hand(model: nn.Module, image_size: int) -> tuple[int, int]:
    """(parameters, multiply-adds of one image) of ``model``: a forward hook on every Conv2d and Linear adds
    output elements x (input channels / groups) x kernel area, and output elements x in_features."""
    macs = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs.append(output.numel() * module.in_channels // module.groups * kh * kw)
        else:
            macs.append(output.numel() * module.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    for handle in handles:
        handle.remove()
    return sum(p.numel() for p in model.parameters()), sum(macs)


def test_compute_macs_counts_timm_models(results, tmp_path):
    rows = report.build_rows(report.load_results([results]), compute_macs=True)
    resnet = next(r for r in rows if r.model == "resnet18")
    params, macs = count_by_hand(timm.create_model("resnet18"), 224)
    assert (params, macs) == (11_689_512, 1_814_073_344)  # torchvision's documented figures (1.81 GFLOPS)
    assert resnet.params_m == pytest.approx(params / 1e6, abs=1e-9)
    assert resnet.macs_g == pytest.approx(macs / 1e9, abs=1e-9)  # conv + linear multiply-adds (BN not counted)
    assert next(r for r in rows if r.model == "genas_flatness_cifar100").macs_g == 0.58  # meta wins


def test_published_rows_are_labelled_and_apart(results, tmp_path):
    out = tmp_path / "report"
    assert report.main(["--results", str(results), "--out", str(out), "--published"]) == 0
    rows = read_csv(out / "report.csv")
    measured = [r for r in rows[1:] if r[1] == "measured"]
    published = [r for r in rows[1:] if r[1] == "published"]
    assert len(measured) == 3 and len(published) == 7 and len(rows) == 11
    assert rows[1:4] == measured  # measured first, never interleaved
    # GeNAS flatness, paper Table 4 (V2, A, COCO, Cityscapes) and Table 3 (top-1 76.1, 5.2 M, 0.58 G)
    assert ["GeNAS (Flatness)", "published", "Flatness", "5.2", "0.58", "76.1", "—", "—", "63.38", "5.65", "—", "—",
            "—", "—", "37.05", "72.58"] in published
    assert ["PC-DARTS", "published", "Val. loss", "5.3", "0.59", "74.8", "—", "—", "62.53", "3.85", "—", "—", "—",
            "—", "35.56", "70.68"] in published
    md = (out / "report.md").read_text(encoding="utf-8")
    measured_part, published_part = md.split("## Published")
    assert "GeNAS (Flatness)" not in measured_part
    assert "| GeNAS (Flatness) | Flatness | 5.20 | 0.58 | 76.10 |" in published_part


def test_malformed_result_names_the_file_and_writes_nothing(results, tmp_path, capsys):
    bad = results / "robustness" / "bad.json"
    bad.write_text(json.dumps({"schema": "genas-result/1", "kind": "robustness", "model": "m",
                               "metrics": {"top1": "high"}, "meta": {"set": "imagenet"}}))
    out = tmp_path / "report"
    assert report.main(["--results", str(results), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "metric 'top1' must be a number" in err
    assert not out.exists()

    bad.write_text('{"schema": "genas-result/1", "kind": "robustness", "model": ')  # truncated
    assert report.main(["--results", str(results), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not valid JSON" in err
    assert not out.exists()


def test_two_results_for_one_cell_is_an_error(results, tmp_path):
    again = write_result(results / "rerun" / "v2.json", "robustness", "genas_flatness_cifar100", {"top1": 63.0},
                         set="imagenet-v2")
    with pytest.raises(report.ReportError, match="2 results for ImageNet-V2 top-1") as err:
        report.write_report([results], tmp_path / "report")
    assert str(again.resolve()) in str(err.value)
    assert str((results / "robustness" / "v2.json").resolve()) in str(err.value)
    assert not (tmp_path / "report").exists()


def test_folders_without_results(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report.main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "no result files" in capsys.readouterr().err
    assert report.main(["--results", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_bad_published_file(results, tmp_path):
    wrong = tmp_path / "published.yaml"
    wrong.write_text("paper: x\nmodels:\n  - name: A\n    coco_ap: high\n")
    with pytest.raises(ValueError, match=r"published\.yaml: models\[0\] \(A\): \['coco_ap'\] must be numbers"):
        report.write_report([results], tmp_path / "report", published=True, published_file=wrong)
    wrong.write_text("paper: x\nmodels:\n  - name: A\n    coco: 1\n")
    with pytest.raises(ValueError, match=r"unknown: \['coco'\]"):
        report.load_published(wrong)


def test_metric_bars(tmp_path):
    table = {"a": {"ImageNet top-1": 76.05, "COCO AP": None}, "b": {"ImageNet top-1": 75.0, "COCO AP": 36.1},
             "c (published)": {"ImageNet top-1": 76.1, "COCO AP": 37.05},
             "d": {"ImageNet top-1": None, "COCO AP": None}}
    assert_png(plot_metric_bars(table, tmp_path / "bars.png", hatched=["c (published)"]))
    assert_png(plot_metric_bars({"x": {"COCO AP": None}}, tmp_path / "empty.png"))


def test_metric_bars_group_the_shift_sets(tmp_path):
    assert [report.GROUPS[c.title] for c in report.COLUMNS] == [report.CLEAN] * 3 + [report.SHIFT] * 6 + \
        [report.TRANSFER] * 2
    assert [c.title for c in report.COLUMNS if c.lower_is_better] == ["ImageNet ECE ↓", "ImageNet-C mCE ↓"]
    row = {c.title: 10.0 + i for i, c in enumerate(report.COLUMNS)}
    table = {"a": row, "b": {k: v + 1 for k, v in row.items()}}
    grouped = assert_png(plot_metric_bars(table, tmp_path / "grouped.png", groups=report.GROUPS))
    flat = assert_png(plot_metric_bars(table, tmp_path / "flat.png"))
    # three bands (3 clean, 6 shift = 2 rows of 4, 2 transfer) are 4 panel rows; ungrouped, 11 panels are 3 rows
    assert grouped.shape[0] > flat.shape[0] * 1.2
