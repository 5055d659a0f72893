"""Robustness evaluators: class lists, layouts, metrics, and the CLI on generated folders of each exact layout.

The tiny model `NearestColour` predicts from an image's mean colour: class k has the prototype colour
((k % 10) * 25, (k // 10 % 10) * 26, (k // 100) * 28) and logit k = -10 * squared distance (colours in [0, 1]) to it, so a
uniformly coloured image's ranking is known by construction and expected metrics are counted by hand.
"""
from __future__ import annotations

import hashlib
import json
import os
import pkgutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score
from timm.data import create_transform
from torchmetrics.classification import MulticlassCalibrationError
from torchvision.datasets import ImageFolder

from genas.core.results import write_result
import robustness.eval as robustness_eval
from robustness.eval import (InferenceOptions, UnreadableImageError, evaluate, inference_options, main, parse_args,
                             prepare_samples)
from robustness.layouts import (CORRUPTIONS, LayoutError, imagenet1k_wnids, indices_in_1k, real_labels, subset_wnids,
                                timm_subset_indices)
from robustness.metrics import (alexnet_reference, corruption_errors, expected_calibration_error, fpr_at_recall,
                                ood_detection_metrics, topk_correct)

REPO = Path(__file__).resolve().parents[1]
PROTOS = np.array([[(k % 10) * 25, (k // 10 % 10) * 26, (k // 100) * 28] for k in range(1000)], dtype=np.float64)
# Identity preprocessing for 8x8 PNGs: pixel values / 255, no normalisation, no resize.
TRANSFORM = create_transform(input_size=(3, 8, 8), interpolation="bilinear", crop_pct=1.0,
                             mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
OPTS = InferenceOptions(batch_size=3, workers=0, progress=False)
WNIDS = imagenet1k_wnids()


class NearestColour(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("protos", torch.tensor(PROTOS / 255.0, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        colour = x.mean(dim=(2, 3))
        return -10.0 * ((colour[:, None, :] - self.protos[None]) ** 2).sum(-1)


def _png(path: Path, colour_of_class: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = tuple(int(v) for v in PROTOS[colour_of_class])
    Image.new("RGB", (8, 8), rgb).save(path)


def _folders(root: Path, names) -> Path:
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


def _restricted_logits(colours: list[int], keep: list[int]) -> np.ndarray:
    """What NearestColour outputs for these colours, computed in float64 numpy."""
    d2 = ((PROTOS[colours][:, None, :] - PROTOS[keep][None]) / 255.0) ** 2
    return -10.0 * d2.sum(-1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _torchmetrics_ece(probs: np.ndarray, correct: np.ndarray) -> float:
    """The reference ECE: torchmetrics' 15-bin L1 calibration error, fed targets that make `correct` true."""
    preds = torch.tensor(probs, dtype=torch.float32)
    top = preds.argmax(1)
    target = torch.where(torch.tensor(correct), top, (top + 1) % preds.shape[1])
    metric = MulticlassCalibrationError(num_classes=preds.shape[1], n_bins=15, norm="l1")
    return 100.0 * float(metric(preds, target))


# ---------------------------------------------------------------- class lists


def test_class_lists_match_published_files(imagenet_classes):
    lines = lambda name: (imagenet_classes / name).read_text().split()  # noqa: E731
    assert list(WNIDS) == lines("imagenet1k_wnids.txt")
    assert list(subset_wnids("imagenet_a")) == lines("imagenet_a_wnids.txt")
    assert list(subset_wnids("imagenet_o")) == lines("imagenet_o_wnids.txt")
    assert indices_in_1k(subset_wnids("imagenet_a")) == [int(i) for i in lines("imagenet_a_indices_in_1k.txt")]
    assert indices_in_1k(subset_wnids("imagenet_o")) == [int(i) for i in lines("imagenet_o_indices_in_1k.txt")]
    v2 = json.loads((imagenet_classes / "imagenetv2_class_info.json").read_text())
    assert [c["wnid"] for c in sorted(v2, key=lambda c: c["cid"])] == list(WNIDS)  # V2 folder i = wnid i


def test_class_lists_are_timms_and_sorted_1k_subsets():
    assert len(WNIDS) == len(set(WNIDS)) == 1000
    for name in ("imagenet_a", "imagenet_r", "imagenet_o"):
        wnids = subset_wnids(name)
        assert len(set(wnids)) == 200 and list(wnids) == sorted(wnids) and set(wnids) <= set(WNIDS)
    for name in ("imagenet_a", "imagenet_r"):  # timm's own files, read through the evaluator
        timm_wnids = pkgutil.get_data("timm.data", f"_info/{name}_synsets.txt").decode().split()
        assert list(subset_wnids(name)) == timm_wnids
        assert list(timm_subset_indices(name)) == indices_in_1k(subset_wnids(name))  # 1k order
    assert indices_in_1k(subset_wnids("imagenet_a"))[:3] == [6, 11, 13]
    assert indices_in_1k(subset_wnids("imagenet_r"))[:3] == [1, 2, 4]
    assert indices_in_1k(subset_wnids("imagenet_o"))[:3] == [1, 51, 70]
    assert not (REPO / "robustness" / "class_lists" / "imagenet_a_wnids.txt").exists()  # no copy of timm's list
    labels = real_labels()
    assert len(labels) == 50000 and labels[:5] == ((), (970, 795), (230, 231), (809,), (516, 850))


# ---------------------------------------------------------------- metrics


def test_topk_correct_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.5, 0.2, 0.3, 0.4],    # ranking 1,3,6,5,4,0,2
                           [0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],    # ranking 0,6,5,4,3,2,1
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])   # ranking 6,5,4,3,2,1,0
    targets = torch.tensor([1, 4, 0])   # rank 0, rank 3, rank 6
    assert topk_correct(logits, targets, ks=(1, 5)) == {1: 1, 5: 2}
    assert topk_correct(logits[:, :3], torch.tensor([2, 2, 0]), ks=(1, 5)) == {1: 0, 5: 3}  # k capped at 3


def test_ece_by_hand_and_against_torchmetrics():
    # bins of width 1/15: 0.05 -> bin 0, 0.5 -> bin 7 (0.4667..0.5333), 0.52 -> bin 7, 0.99 -> bin 14, 1.0 -> bin 15
    conf = np.array([0.05, 0.5, 0.52, 0.99, 1.0])
    correct = np.array([False, True, False, True, True])
    # |0 - 0.05| + |1 - 0.5 + 0 - 0.52| + |1 - 0.99| + |1 - 1| over 5 images
    assert expected_calibration_error(conf, correct) == pytest.approx(100 * (0.05 + 0.02 + 0.01) / 5, abs=1e-5)
    rng = np.random.default_rng(0)
    probs = _softmax(rng.normal(scale=3.0, size=(500, 10)))
    correct = rng.random(500) < 0.6
    assert expected_calibration_error(probs.max(1), correct) == pytest.approx(_torchmetrics_ece(probs, correct),
                                                                              abs=1e-4)


def test_ood_metrics_by_hand_and_against_sklearn():
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.1])
    is_ood = np.array([1, 1, 1, 0, 0, 0, 0], dtype=bool)
    m = ood_detection_metrics(scores, is_ood)
    # AUROC: OOD>ID pairs 4+4+3 of 12; AP: precision at each OOD hit 1, 1, 3/4; recall closest to 95% is 3/3 at
    # threshold 0.4, which also flags ID 0.7 -> FPR 1/4.
    assert m["auroc"] == pytest.approx(100 * 11 / 12)
    assert m["aupr"] == pytest.approx(100 * (1 + 1 + 0.75) / 3)
    assert m["fpr95"] == pytest.approx(25.0)

    rng = np.random.default_rng(0)
    is_ood = rng.random(300) < 0.3
    scores = rng.normal(size=300) + 0.8 * is_ood
    m = ood_detection_metrics(scores, is_ood)
    assert m["aupr"] == pytest.approx(100 * average_precision_score(is_ood, scores))
    assert m["auroc"] == pytest.approx(100 * roc_auc_score(is_ood, scores))
    assert m["fpr95"] == pytest.approx(_fpr95_reference(scores, is_ood))


def test_fpr95_takes_the_last_point_of_a_plateau():
    # 19 of 20 OOD images above every ID image but two (0.5, 0.4); the 20th OOD image at 0.1; 8 more ID below.
    ood = list(np.linspace(0.99, 0.81, 19)) + [0.1]
    ind = [0.5, 0.4] + list(np.linspace(0.08, 0.01, 8))
    scores = np.array(ood + ind)
    is_ood = np.array([True] * 20 + [False] * 10)
    # recall 19/20 = 0.95 at the thresholds 0.81 (0 FP), 0.5 (1 FP) and 0.4 (2 FP): the reference takes 0.4.
    assert fpr_at_recall(scores, is_ood) == pytest.approx(20.0)
    assert _fpr95_reference(scores, is_ood) == pytest.approx(20.0)
    assert _fpr95_first_point(scores, is_ood) == 0.0  # the old rule: lower by the plateau width


def _fpr95_reference(scores: np.ndarray, is_ood: np.ndarray) -> float:
    """The reference rule written out plainly: every threshold t (flag 'OOD' when score >= t), from the highest
    down to the first that flags every OOD image; take the recall closest to 95%, ties to the lowest t."""
    best = None
    for t in sorted(set(scores.tolist()), reverse=True):
        recall = (scores[is_ood] >= t).mean()
        fpr = 100.0 * float((scores[~is_ood] >= t).mean())
        if best is None or abs(recall - 0.95) <= best[0]:
            best = (abs(recall - 0.95), fpr)
        if recall == 1.0:
            return best[1]
    raise AssertionError("unreachable")


def _fpr95_first_point(scores: np.ndarray, is_ood: np.ndarray) -> float:
    for t in sorted(set(scores.tolist()), reverse=True):
        if (scores[is_ood] >= t).mean() >= 0.95:
            return 100.0 * float((scores[~is_ood] >= t).mean())
    raise AssertionError("unreachable")


def test_mce_by_hand():
    alex = alexnet_reference()["mean_error_over_severities"]
    assert list(alex) == list(CORRUPTIONS) and alexnet_reference()["clean_error"] == 0.4345
    assert alex["gaussian_noise"] == 0.886428 and alex["jpeg_compression"] == 0.6065
    # every corruption at AlexNet's own error -> every CE = 100, mCE = 100, relative mCE = 100
    same = {(c, s): 100 * alex[c] for c in CORRUPTIONS for s in range(1, 6)}
    out = corruption_errors(same, CORRUPTIONS, clean_error=43.45)
    assert out["mce"] == pytest.approx(100.0) and out["relative_mce"] == pytest.approx(100.0)
    # Gaussian noise solved (E = 0 at every severity): CE 0, the 14 others 100 -> mCE 1400 / 15
    errors = {**same, **{("gaussian_noise", s): 0.0 for s in range(1, 6)}}
    out = corruption_errors(errors, CORRUPTIONS)
    assert out["ce/gaussian_noise"] == 0.0 and out["mce"] == pytest.approx(1400 / 15)
    assert "relative_mce" not in out
    # one severity missing: no CE for that corruption, so no mCE
    del errors[("fog", 3)]
    out = corruption_errors(errors, CORRUPTIONS)
    assert "ce/fog" not in out and "mce" not in out and out["ce/snow"] == pytest.approx(100.0)


# ---------------------------------------------------------------- the accuracy layouts


def test_imagenet_v2_folders_are_class_indices_not_lexicographic(tmp_path):
    root = _folders(tmp_path / "imagenetv2-matched-frequency-format-val", [str(i) for i in range(1000)])
    # (folder = true class, colour = the class NearestColour predicts)
    cases = [("0", 0), ("2", 2), ("10", 10), ("100", 101), ("999", 500)]
    for i, (folder, colour) in enumerate(cases):
        _png(root / folder / f"{i}.png", colour)
    prepared = prepare_samples("imagenet-v2", root)
    assert prepared.keep is None
    assert {Path(p).parent.name: t for p, t in prepared.samples} == {"0": 0, "2": 2, "10": 10, "100": 100, "999": 999}
    out = evaluate(NearestColour(), prepared, TRANSFORM, OPTS)
    # top-1 hits: 0, 2, 10; 100 (coloured 101) has 100 at rank 1 or 2 -> top-5 only; 999 (coloured 500) neither.
    assert (out.metrics["top1"], out.metrics["top5"]) == pytest.approx((60.0, 80.0))
    assert out.num_images == 5 and out.skipped == []
    # NLL and ECE from the float64 logits of the same images (samples are in folder order 0, 10, 100, 2, 999)
    order = sorted(range(5), key=lambda i: cases[i][0])
    logits = _restricted_logits([cases[i][1] for i in order], list(range(1000)))
    targets = [int(cases[i][0]) for i in order]
    probs = _softmax(logits)
    assert out.metrics["nll"] == pytest.approx(-np.mean(np.log(probs[range(5), targets])), rel=1e-5)
    correct = probs.argmax(1) == np.array(targets)
    assert out.metrics["ece"] == pytest.approx(_torchmetrics_ece(probs, correct), abs=1e-4)
    # ImageFolder's string order ('10' -> 2, '2' -> 112) would score only folder '0': this test catches it.
    lexicographic = ImageFolder(str(root), allow_empty=True).class_to_idx
    assert (lexicographic["10"], lexicographic["2"]) == (2, 112)
    prepared.samples = [(p, lexicographic[Path(p).parent.name]) for p, _ in prepared.samples]
    assert evaluate(NearestColour(), prepared, TRANSFORM, OPTS).metrics["top1"] == 20.0


def test_imagenet_a_restricts_logits_to_the_200_classes(tmp_path):
    a_wnids = subset_wnids("imagenet_a")
    a_index = indices_in_1k(a_wnids)
    root = _folders(tmp_path / "imagenet-a", a_wnids)
    # folder class (1k index) -> colour: 6 coloured 7 (not an A class; its nearest A class is 6), 23 coloured 13
    # (13 is an A class; 23 is the next-nearest A class), 13 coloured 13, 22 coloured 900 (far from 22).
    cases = [(6, 7), (23, 13), (13, 13), (22, 900)]
    for i, (cls, colour) in enumerate(cases):
        _png(root / WNIDS[cls] / f"{i}.png", colour)
    prepared = prepare_samples("imagenet-a", root)
    assert prepared.keep == a_index
    assert sorted(t for _, t in prepared.samples) == sorted(a_index.index(cls) for cls, _ in cases)
    out = evaluate(NearestColour(), prepared, TRANSFORM, OPTS)
    assert (out.metrics["top1"], out.metrics["top5"]) == pytest.approx((50.0, 75.0))
    # the same by an independent float64 ranking over the 200 A classes
    logits = _restricted_logits([c for _, c in cases], a_index)
    ranks = [int((logits[i] > logits[i, a_index.index(cls)]).sum()) for i, (cls, _) in enumerate(cases)]
    assert ranks[0] == 0 and ranks[1] == 1 and ranks[2] == 0 and ranks[3] >= 5
    # without the restriction, the image coloured 7 would be predicted as class 7 (not an A class)
    prepared.keep = list(range(1000))
    assert evaluate(NearestColour(), prepared, TRANSFORM, OPTS).metrics["top1"] == 0.0


def test_imagenet_r_restricts_logits_in_1k_order(tmp_path):
    r_index = list(timm_subset_indices("imagenet_r"))  # 1, 2, 4, 6, 8, 9, 11, 13, ...
    root = _folders(tmp_path / "imagenet-r", subset_wnids("imagenet_r"))
    # restricted ranking of colour 1: 1, 2, 11, ...; of colour 9: 9, 8, 29, 107, 208, 219 (no 13)
    cases = [(1, 1), (2, 1), (8, 8), (13, 9)]   # top-1 hit, top-5 only, top-1 hit, neither
    for i, (cls, colour) in enumerate(cases):
        _png(root / WNIDS[cls] / f"{i}.png", colour)
    prepared = prepare_samples("imagenet-r", root)
    assert prepared.keep == r_index and sorted(t for _, t in prepared.samples) == [0, 1, 4, 7]
    out = evaluate(NearestColour(), prepared, TRANSFORM, OPTS)
    assert (out.metrics["top1"], out.metrics["top5"]) == pytest.approx((50.0, 75.0))


def test_imagenet_sketch_layout_and_accuracy(tmp_path):
    release = tmp_path / "ImageNet-Sketch"
    root = _folders(release / "sketch", WNIDS)
    for i, (cls, colour) in enumerate([(0, 0), (5, 5), (7, 900)]):
        _png(root / WNIDS[cls] / f"{i}.png", colour)
    out = evaluate(NearestColour(), prepare_samples("imagenet-sketch", root), TRANSFORM, OPTS)
    assert (out.metrics["top1"], out.metrics["top5"]) == pytest.approx((100 * 2 / 3, 100 * 2 / 3))
    with pytest.raises(LayoutError, match=r"one level down: did you mean --data .*ImageNet-Sketch/sketch\?"):
        prepare_samples("imagenet-sketch", release)


def test_imagenet_real_scores_label_sets_and_drops_empty_ones(tmp_path):
    root = _folders(tmp_path / "val", WNIDS)
    # val image number -> (folder class, colour); ReaL sets: #1 (), #2 (970, 795), #4 (809,), #5 (516, 850)
    cases = {1: (0, 0), 2: (970, 795), 4: (809, 808), 5: (516, 0)}
    for n, (cls, colour) in cases.items():
        _png(root / WNIDS[cls] / f"ILSVRC2012_val_{n:08d}.png", colour)
    prepared = prepare_samples("imagenet-real", root)
    out = evaluate(NearestColour(), prepared, TRANSFORM, OPTS)
    # ReaL over #2, #4, #5: #2 top-1 in its set; #4 predicts 808, 809 within the top 3; #5 neither
    assert out.metrics["real_top1"] == pytest.approx(100 / 3) and out.metrics["real_top5"] == pytest.approx(200 / 3)
    # original labels over all four: #1 top-1 right; #4 (class 809) top-5 only
    assert (out.metrics["top1"], out.metrics["top5"]) == pytest.approx((25.0, 50.0))
    assert out.counts == {"num_real": 3, "num_real_excluded": 1}
    # ECE on the ReaL images (#2, #4, #5) against ReaL correctness (1, 0, 0)
    probs = _softmax(_restricted_logits([cases[n][1] for n in (2, 4, 5)], list(range(1000))))
    assert out.metrics["ece"] == pytest.approx(_torchmetrics_ece(probs, np.array([True, False, False])), abs=1e-4)
    (root / WNIDS[3] / "renamed.png").write_bytes(b"not even an image")  # caught by name, never opened
    with pytest.raises(LayoutError, match="renamed.png is not an ImageNet val file name"):
        prepare_samples("imagenet-real", root)


# ---------------------------------------------------------------- ImageNet-C


def _imagenet_c(root: Path, corruptions: dict[str, list[list[int]]]) -> Path:
    """corruption -> per severity 1..5, the colours of two images of class 0 (colour 0 = right, 900 = wrong)."""
    for c, severities in corruptions.items():
        for s, colours in enumerate(severities, start=1):
            _folders(root / c / str(s), WNIDS)
            for i, colour in enumerate(colours):
                _png(root / c / str(s) / WNIDS[0] / f"{i}.png", colour)
    return root


def test_imagenet_c_partial_release_errors_ce_and_relative_ce(tmp_path, capsys):
    # Gaussian noise errors per severity 0, 50, 100, 100, 100 (mean 70); saturate (extra) never wrong.
    root = _imagenet_c(tmp_path / "imagenet-c", {
        "gaussian_noise": [[0, 0], [0, 900], [900, 900], [900, 900], [900, 900]],
        "saturate": [[0, 0]] * 5})
    prepared = prepare_samples("imagenet-c", root)
    assert prepared.info["corruptions"] == ["gaussian_noise", "saturate"]
    assert prepared.info["missing_corruptions"] == [c for c in CORRUPTIONS[1:]] + ["speckle_noise", "gaussian_blur",
                                                                                   "spatter"]
    out = evaluate(NearestColour(), prepared, TRANSFORM, OPTS, clean_error=20.0)
    m = out.metrics
    assert [m[f"error/gaussian_noise/{s}"] for s in range(1, 6)] == pytest.approx([0, 50, 100, 100, 100])
    assert m["error/gaussian_noise"] == pytest.approx(70.0) and m["mean_error"] == pytest.approx(70.0)
    assert m["ce/gaussian_noise"] == pytest.approx(100 * 70 / 88.6428)
    assert m["relative_ce/gaussian_noise"] == pytest.approx(100 * (70 - 20) / (88.6428 - 43.45))
    assert m["extra_mean_error"] == 0.0 and "ce/saturate" not in m and "mce" not in m
    assert out.num_images == 20

    # the CLI: a partial release says what is missing, and writes no mCE
    clean = write_result(tmp_path / "clean.json", "robustness", "test_resnet", {"top1": 80.0}, set="imagenet")
    res = tmp_path / "c.json"
    assert main(["--set", "imagenet-c", "--data", str(root), "--model", "test_resnet", "--input-size", "3", "8", "8",
                 "--corruptions", "gaussian_noise", "--severities", "1", "2", "--clean-result", str(clean),
                 "--workers", "0", "--no-progress", "--out", str(res)]) == 0
    meta = json.loads(res.read_text())["meta"]
    assert meta["corruptions"] == ["gaussian_noise"] and meta["severities"] == [1, 2]
    assert meta["clean_error"] == 20.0 and "all 5 severities" in meta["mce_missing"]
    assert set(json.loads(res.read_text())["metrics"]) >= {"error/gaussian_noise/1", "error/gaussian_noise/2"}
    assert "ce/gaussian_noise" not in json.loads(res.read_text())["metrics"]  # CE needs all five severities


def test_imagenet_c_layout_errors(tmp_path, capsys):
    root = _imagenet_c(tmp_path / "c", {"fog": [[0]] * 5})
    (root / "fogg").mkdir()
    with pytest.raises(LayoutError, match="unknown corruption folder.*fogg"):
        prepare_samples("imagenet-c", root)
    (root / "fogg").rmdir()
    with pytest.raises(LayoutError, match="none of the selected corruptions"):
        prepare_samples("imagenet-c", root, corruptions=["snow"])
    with pytest.raises(LayoutError, match="point --data at the ImageNet-C root"):
        prepare_samples("imagenet-c", root / "fog" / "1")
    (root / "fog" / "4" / WNIDS[999]).rmdir()
    with pytest.raises(LayoutError, match=f"imagenet-c fog severity 4: .*missing 1 class folder.*{WNIDS[999]}"):
        prepare_samples("imagenet-c", root)
    assert main(["--set", "imagenet-a", "--data", str(root), "--model", "test_resnet", "--severities", "1"]) == 2
    assert "--severities is only used with --set imagenet-c" in capsys.readouterr().err


# ---------------------------------------------------------------- ImageNet-O


def test_imagenet_o_detection_against_sklearn(tmp_path):
    o_wnids = subset_wnids("imagenet_o")
    o_index = indices_in_1k(o_wnids)
    ood_root = _folders(tmp_path / "imagenet-o", o_wnids)
    val_root = _folders(tmp_path / "val", o_wnids + (WNIDS[0],))  # class 0 is not an O class: ignored
    in_dist = [(1, 1), (51, 51), (70, 60), (79, 80), (107, 107)]   # (folder class, colour)
    ood = [(1, 0), (51, 500), (89, 89), (90, 999), (109, 300), (117, 117)]
    for i, (cls, colour) in enumerate(in_dist):
        _png(val_root / WNIDS[cls] / f"val_{i}.png", colour)
    for i, (cls, colour) in enumerate(ood):
        _png(ood_root / WNIDS[cls] / f"o_{i}.png", colour)
    _png(val_root / WNIDS[0] / "ignored.png", 0)
    prepared = prepare_samples("imagenet-o", ood_root, val_root)
    assert prepared.keep == o_index and len(prepared.samples) == 11
    assert sum(t < 0 for _, t in prepared.samples) == 6
    out = evaluate(NearestColour(), prepared, TRANSFORM, OPTS)
    assert out.counts == {"num_in_distribution": 5, "num_ood": 6} and out.num_images == 11

    logits = _restricted_logits([c for _, c in in_dist + ood], o_index)
    prob = _softmax(logits)
    score = -prob.max(1)
    is_ood = np.array([0] * 5 + [1] * 6, dtype=bool)
    assert np.diff(np.sort(score)).min() > 1e-3  # no near-ties that float32 could order differently
    assert 50 < 100 * roc_auc_score(is_ood, score) < 100  # the construction is neither trivial nor inverted
    assert out.metrics["aupr"] == pytest.approx(100 * average_precision_score(is_ood, score), abs=1e-6)
    assert out.metrics["auroc"] == pytest.approx(100 * roc_auc_score(is_ood, score), abs=1e-6)
    assert out.metrics["fpr95"] == pytest.approx(_fpr95_reference(score, is_ood), abs=1e-6)
    # calibration on the in-distribution side, 200-class restricted, against the folder class
    targets = [o_index.index(cls) for cls, _ in in_dist]
    assert out.metrics["nll"] == pytest.approx(-np.mean(np.log(prob[range(5), targets])), rel=1e-5)
    correct = prob[:5].argmax(1) == np.array(targets)
    assert out.metrics["ece"] == pytest.approx(_torchmetrics_ece(prob[:5], correct), abs=1e-4)


# ---------------------------------------------------------------- layout errors, options and unreadable images


def test_layout_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(LayoutError, match="data root not found: .*nowhere"):
        prepare_samples("imagenet-a", tmp_path / "nowhere")
    a_wnids = subset_wnids("imagenet_a")
    root = _folders(tmp_path / "a", list(a_wnids[1:]) + ["n99999999"])
    with pytest.raises(LayoutError, match=rf"200 ImageNet-A wnid.*missing 1 .*{a_wnids[0]}.*unexpected 1 .*n99999999"):
        prepare_samples("imagenet-a", root)
    (root / "n99999999").rmdir()
    (root / a_wnids[0]).mkdir()
    with pytest.raises(LayoutError, match="no images"):
        prepare_samples("imagenet-a", root)
    wnid_root = _folders(tmp_path / "val", WNIDS)
    with pytest.raises(LayoutError, match=r"folders named 0..999.*missing 1000.*did you mean --set imagenet "
                                          r"\(or imagenet-sketch, imagenet-real\)\?"):
        prepare_samples("imagenet-v2", wnid_root)
    with pytest.raises(LayoutError, match="--in-dist is required"):
        prepare_samples("imagenet-o", _folders(tmp_path / "o", subset_wnids("imagenet_o")))
    with pytest.raises(LayoutError, match="did you mean --set imagenet-a"):
        prepare_samples("imagenet-o", root, in_dist=wnid_root)


@pytest.mark.parametrize("device, message", [("gpu7", "--device 'gpu7' is not a torch device"),
                                             ("cuda:7", "--device cuda:7: ")])
def test_bad_device_is_one_line_exit_2(tmp_path, capsys, device, message):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    out = tmp_path / "res.json"
    assert main(["--set", "imagenet", "--data", str(tmp_path), "--model", "test_resnet", "--device", device,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1 and not out.exists()


def test_cli_fails_cleanly_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "res.json"
    assert main(["--set", "imagenet", "--data", str(tmp_path / "missing"), "--model", "test_resnet",
                 "--out", str(out), "--no-progress"]) == 2
    assert "data root not found" in capsys.readouterr().err and not out.exists()
    assert main(["--set", "imagenet", "--data", str(tmp_path), "--model", "genas_c1000", "--out", str(out)]) == 2
    assert "'genas_c1000' is not a timm model" in capsys.readouterr().err

    root = _folders(tmp_path / "v2", [str(i) for i in range(1000)])
    _png(root / "3" / "good.png", 3)
    (root / "4" / "broken.png").write_bytes(b"not a png")
    args = ["--set", "imagenet-v2", "--data", str(root), "--model", "test_resnet", "--input-size", "3", "8", "8",
            "--workers", "0", "--no-progress", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"cannot read image {root / '4' / 'broken.png'}" in err and "--skip-bad" in err and not out.exists()
    with pytest.raises(UnreadableImageError):
        evaluate(NearestColour(), prepare_samples("imagenet-v2", root), TRANSFORM, OPTS)

    assert main(args + ["--skip-bad"]) == 0
    result = json.loads(out.read_text())
    assert result["meta"]["num_images"] == 1 and result["meta"]["num_skipped"] == 1
    assert result["meta"]["skipped"] == [str(root / "4" / "broken.png")]


# ---------------------------------------------------------------- the CLI end to end with a real timm model


def _confident_images(model: torch.nn.Module, n: int, rng: np.random.Generator):
    """n random 32x32 images whose top-1 and top-5 boundaries have clear float margins, with their logits."""
    images, logits = [], []
    while len(images) < n:
        img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        x = (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - 0.5) / 0.5  # test_resnet mean/std 0.5
        with torch.no_grad():
            out = model(x[None])[0]
        top = out.topk(6).values
        if top[0] - top[1] > 1e-3 and top[4] - top[5] > 1e-3:
            images.append(img)
            logits.append(out)
    return images, torch.stack(logits)


def _test_resnet_checkpoint(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=1000).eval()
    ckpt = tmp_path / "test_resnet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    return model, ckpt


def test_cli_imagenet_v2_with_timm_model_and_checkpoint(tmp_path):
    model, ckpt = _test_resnet_checkpoint(tmp_path)
    images, logits = _confident_images(model, 6, np.random.default_rng(0))
    predicted = logits.argmax(1).tolist()
    targets = [p if i % 2 == 0 else (p + 1) % 1000 for i, p in enumerate(predicted)]  # 3 of 6 right
    root = _folders(tmp_path / "imagenetv2-top-images-format-val", [str(i) for i in range(1000)])
    for i, (img, t) in enumerate(zip(images, targets)):
        Image.fromarray(img).save(root / str(t) / f"{i}.png")
    top5 = sum(t in logits[i].topk(5).indices.tolist() for i, t in enumerate(targets))

    out = tmp_path / "out" / "v2.json"
    proc = subprocess.run([sys.executable, "robustness/eval.py", "--set", "imagenet-v2", "--data", str(root),
                           "--model", "test_resnet", "--checkpoint", str(ckpt), "--input-size", "3", "32", "32",
                           "--crop-pct", "1.0", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "imagenet-v2 test_resnet: top1 50.00" in proc.stdout
    result = json.loads(out.read_text())
    assert result["kind"] == "robustness" and result["model"] == "test_resnet"
    m = result["metrics"]
    assert (m["top1"], m["top5"]) == pytest.approx((50.0, 100.0 * top5 / 6))
    probs = logits.double().softmax(1).numpy()
    assert m["nll"] == pytest.approx(-np.mean(np.log(probs[range(6), targets])), rel=1e-4)
    assert m["ece"] == pytest.approx(_torchmetrics_ece(probs, np.arange(6) % 2 == 0), abs=1e-3)
    meta = result["meta"]
    assert meta["set"] == "imagenet-v2" and meta["variant"] == "top-images" and meta["world_size"] == 1
    assert meta["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["num_images"] == 6 and meta["num_skipped"] == 0
    assert meta["data_config"]["input_size"] == [3, 32, 32] and meta["data_config"]["mean"] == [0.5] * 3
    assert meta["seconds"] > 0 and meta["images_per_second"] > 0


def test_torchrun_two_processes_give_the_one_process_numbers(tmp_path):
    """ImageNet-O under torchrun (2 gloo processes): disjoint shards, gathered scores, identical metrics."""
    model, ckpt = _test_resnet_checkpoint(tmp_path)
    images, _ = _confident_images(model, 13, np.random.default_rng(1))
    o_wnids = subset_wnids("imagenet_o")
    ood_root, val_root = _folders(tmp_path / "o", o_wnids), _folders(tmp_path / "val", o_wnids)
    for i, img in enumerate(images):
        Image.fromarray(img).save((val_root if i < 7 else ood_root) / o_wnids[i * 13 % 200] / f"{i}.png")
    common = ["--set", "imagenet-o", "--data", str(ood_root), "--in-dist", str(val_root), "--model", "test_resnet",
              "--checkpoint", str(ckpt), "--input-size", "3", "32", "32", "--crop-pct", "1.0", "--batch-size", "1",
              "--workers", "0", "--device", "cpu", "--no-progress"]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main(common + ["--out", str(one)]) == 0
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "robustness/eval.py", *common, "--out", str(two)],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("imagenet-o test_resnet:") == 1 and "2 processes" in proc.stdout  # rank 0 prints
    r1, r2 = json.loads(one.read_text()), json.loads(two.read_text())
    assert r2["meta"]["world_size"] == 2 and r1["meta"]["world_size"] == 1
    assert r2["metrics"] == r1["metrics"]  # bit-equal: same per-image outcomes, same order
    for key in ("num_images", "num_in_distribution", "num_ood"):
        assert r2["meta"][key] == r1["meta"][key]
    assert (r1["meta"]["num_in_distribution"], r1["meta"]["num_ood"]) == (7, 6)


# ---------------------------------------------------------------- inference settings: defaults and --compile


def test_default_inference_is_eager_fp32_nchw_on_every_device():
    """The fastest measured setting on the H200 (genas_c100: bf16 0.48x, channels_last 0.47x, both 0.55x of eager
    fp32) is what the command line runs without flags, on CUDA as on the CPU; --compile is opt-in and stays fp32."""
    argv = ["--set", "imagenet", "--data", "x", "--model", "genas_c100"]
    for device in ("cuda", "cpu"):
        opts = inference_options(parse_args(argv), torch.device(device))
        assert (opts.amp_dtype, opts.channels_last, opts.compile, opts.cudnn_benchmark) == (None, False, False, True)
    assert (InferenceOptions().amp_dtype, InferenceOptions().channels_last, InferenceOptions().compile) == (
        None, False, False)
    compiled = inference_options(parse_args(argv + ["--compile"]), torch.device("cuda"))
    assert compiled.compile and compiled.amp_dtype is None and not compiled.channels_last


def _noise_set(root: Path, n: int, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    root = _folders(root, [str(i) for i in range(1000)])
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / str(i * 7) / f"{i}.png")
    return root


TRANSFORM_32 = create_transform(input_size=(3, 32, 32), interpolation="bilinear", crop_pct=1.0,
                                mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_compile_gives_the_eager_numbers_with_one_graph(tmp_path, monkeypatch):
    """--compile through dynamo's graph capture (its ``eager`` backend stands in for inductor, whose code
    generation takes minutes on a 2-core CPU; the inductor test below runs it): 5 images in batches of 3, the short
    last batch padded, so one graph serves both; the metrics equal eager ones to rel 1e-5."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(robustness_eval, "COMPILE_BACKEND", backend)
    torch.manual_seed(0)
    model = timm.create_model("genas_c100", C=4, layers=3).eval()
    prepared = prepare_samples("imagenet-v2", _noise_set(tmp_path / "v2", 5))
    eager = evaluate(model, prepared, TRANSFORM_32, OPTS)
    compiled = evaluate(model, prepared, TRANSFORM_32, replace(OPTS, compile=True))
    assert len(graphs) == 1
    assert compiled.num_images == eager.num_images == 5
    assert compiled.metrics == pytest.approx(eager.metrics, rel=1e-5, abs=1e-6)

    out = tmp_path / "compiled.json"  # the flag on the command line, recorded in the result
    assert main(["--set", "imagenet-v2", "--data", str(tmp_path / "v2"), "--model", "test_resnet", "--input-size",
                 "3", "32", "32", "--crop-pct", "1.0", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                 "--no-progress", "--compile", "--out", str(out)]) == 0
    meta = json.loads(out.read_text())["meta"]
    assert meta["compile"] is True and meta["amp"] is None and meta["channels_last"] is False
    assert len(graphs) == 2  # test_resnet: one more graph, for all its batches


@pytest.mark.skipif(not os.environ.get("GENAS_TEST_INDUCTOR"),
                    reason="torch.compile's inductor takes 2-3 minutes to compile even a 3-cell genas_c100 on the "
                           "2-core CPU machines of this suite; GENAS_TEST_INDUCTOR=1 runs it (the GPU figure comes "
                           "from benchmarks/gpu_check.py)")
def test_compile_with_inductor_equals_eager(tmp_path):
    """--compile with the real backend: logits within rtol 1e-4 / atol 1e-5 of eager fp32, the same metrics."""
    torch.manual_seed(0)
    model = timm.create_model("genas_c100", C=4, layers=3).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, dynamic=False)(x), model(x), rtol=1e-4, atol=1e-5)
    prepared = prepare_samples("imagenet-v2", _noise_set(tmp_path / "v2", 5))
    eager = evaluate(model, prepared, TRANSFORM_32, OPTS)
    compiled = evaluate(model, prepared, TRANSFORM_32, replace(OPTS, compile=True))
    assert compiled.metrics == pytest.approx(eager.metrics, rel=1e-4, abs=1e-5)
