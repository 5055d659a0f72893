"""Robustness evaluators: class lists, layouts, metrics, and the CLI on generated folders of each exact layout.

The tiny model `NearestColour` predicts from an image's mean colour: class k has the prototype colour
((k % 10) * 25, (k // 10 % 10) * 26, (k // 100) * 28) and logit k = -10 * squared distance (colours in [0, 1]) to it, so a
uniformly coloured image's ranking is known by construction and expected metrics are counted by hand.
"""
from __future__ import annotations

import hashlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score
from timm.data import create_transform
from torchvision.datasets import ImageFolder

from robustness.layouts import LayoutError, embedded_wnids, imagenet1k_wnids, indices_in_1k
from robustness.eval import InferenceOptions, UnreadableImageError, evaluate, main, prepare_samples
from robustness.metrics import ood_detection_metrics, topk_correct

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


# ---------------------------------------------------------------- class lists


def test_class_lists_match_published_files(imagenet_classes):
    lines = lambda name: (imagenet_classes / name).read_text().split()  # noqa: E731
    assert list(WNIDS) == lines("imagenet1k_wnids.txt")
    assert list(embedded_wnids("imagenet_a")) == lines("imagenet_a_wnids.txt")
    assert list(embedded_wnids("imagenet_o")) == lines("imagenet_o_wnids.txt")
    assert indices_in_1k(embedded_wnids("imagenet_a")) == [int(i) for i in lines("imagenet_a_indices_in_1k.txt")]
    assert indices_in_1k(embedded_wnids("imagenet_o")) == [int(i) for i in lines("imagenet_o_indices_in_1k.txt")]
    v2 = json.loads((imagenet_classes / "imagenetv2_class_info.json").read_text())
    assert [c["wnid"] for c in sorted(v2, key=lambda c: c["cid"])] == list(WNIDS)  # V2 folder i = wnid i


def test_embedded_lists_are_sorted_1k_subsets_and_agree_with_timm():
    a, o = embedded_wnids("imagenet_a"), embedded_wnids("imagenet_o")
    assert len(WNIDS) == len(set(WNIDS)) == 1000
    for wnids in (a, o):
        assert len(set(wnids)) == 200 and list(wnids) == sorted(wnids) and set(wnids) <= set(WNIDS)
    assert indices_in_1k(a)[:3] == [6, 11, 13] and indices_in_1k(o)[:3] == [1, 51, 70]
    timm_a = pkgutil.get_data("timm.data", "_info/imagenet_a_synsets.txt").decode().split()
    timm_a_idx = pkgutil.get_data("timm.data", "_info/imagenet_a_indices.txt").decode().split()
    assert list(a) == timm_a and indices_in_1k(a) == [int(i) for i in timm_a_idx]


# ---------------------------------------------------------------- metrics


def test_topk_correct_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.5, 0.2, 0.3, 0.4],    # ranking 1,3,6,5,4,0,2
                           [0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],    # ranking 0,6,5,4,3,2,1
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])   # ranking 6,5,4,3,2,1,0
    targets = torch.tensor([1, 4, 0])   # rank 0, rank 3, rank 6
    assert topk_correct(logits, targets, ks=(1, 5)) == {1: 1, 5: 2}
    assert topk_correct(logits[:, :3], torch.tensor([2, 2, 0]), ks=(1, 5)) == {1: 0, 5: 3}  # k capped at 3


def test_ood_metrics_by_hand_and_against_sklearn():
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.1])
    is_ood = np.array([1, 1, 1, 0, 0, 0, 0], dtype=bool)
    m = ood_detection_metrics(scores, is_ood)
    # AUROC: OOD>ID pairs 4+4+3 of 12; AP: precision at each OOD hit 1, 1, 3/4; TPR>=95% needs all 3 OOD
    # flagged, i.e. threshold 0.4, which also flags ID 0.7 -> FPR 1/4.
    assert m["auroc"] == pytest.approx(100 * 11 / 12)
    assert m["aupr"] == pytest.approx(100 * (1 + 1 + 0.75) / 3)
    assert m["fpr95"] == pytest.approx(25.0)

    rng = np.random.default_rng(0)
    is_ood = rng.random(300) < 0.3
    scores = rng.normal(size=300) + 0.8 * is_ood
    m = ood_detection_metrics(scores, is_ood)
    assert m["aupr"] == pytest.approx(100 * average_precision_score(is_ood, scores))
    assert m["auroc"] == pytest.approx(100 * roc_auc_score(is_ood, scores))
    assert m["fpr95"] == pytest.approx(_fpr95_brute_force(scores, is_ood))


def _fpr95_brute_force(scores: np.ndarray, is_ood: np.ndarray) -> float:
    """FPR at the highest threshold whose TPR reaches 95% (flag 'OOD' when score >= threshold)."""
    for t in sorted(set(scores.tolist()), reverse=True):
        if (scores[is_ood] >= t).mean() >= 0.95:
            return 100.0 * float((scores[~is_ood] >= t).mean())
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- the three accuracy layouts and ImageNet-O


def test_imagenet_v2_folders_are_class_indices_not_lexicographic(tmp_path):
    root = _folders(tmp_path / "imagenetv2-matched-frequency-format-val", [str(i) for i in range(1000)])
    # (folder = true class, colour = the class NearestColour predicts)
    for i, (folder, colour) in enumerate([("0", 0), ("2", 2), ("10", 10), ("100", 101), ("999", 500)]):
        _png(root / folder / f"{i}.png", colour)
    samples, keep = prepare_samples("imagenet-v2", root)
    assert keep is None
    assert {Path(p).parent.name: t for p, t in samples} == {"0": 0, "2": 2, "10": 10, "100": 100, "999": 999}
    out = evaluate("imagenet-v2", NearestColour(), samples, TRANSFORM, keep, OPTS)
    # top-1 hits: 0, 2, 10; 100 (coloured 101) has 100 at rank 1 or 2 -> top-5 only; 999 (coloured 500) neither.
    assert out.metrics == pytest.approx({"top1": 60.0, "top5": 80.0})
    assert out.num_images == 5 and out.skipped == []
    # ImageFolder's string order ('10' -> 2, '2' -> 112) would score only folder '0': this test catches it.
    lexicographic = ImageFolder(str(root), allow_empty=True).class_to_idx
    assert (lexicographic["10"], lexicographic["2"]) == (2, 112)
    wrong = [(p, lexicographic[Path(p).parent.name]) for p, _ in samples]
    assert evaluate("imagenet-v2", NearestColour(), wrong, TRANSFORM, None, OPTS).metrics["top1"] == 20.0


def test_imagenet_a_restricts_logits_to_the_200_classes(tmp_path):
    a_wnids = embedded_wnids("imagenet_a")
    a_index = indices_in_1k(a_wnids)
    root = _folders(tmp_path / "imagenet-a", a_wnids)
    # folder class (1k index) -> colour: 6 coloured 7 (not an A class; its nearest A class is 6), 23 coloured 13
    # (13 is an A class; 23 is the next-nearest A class), 13 coloured 13, 22 coloured 900 (far from 22).
    cases = [(6, 7), (23, 13), (13, 13), (22, 900)]
    for i, (cls, colour) in enumerate(cases):
        _png(root / WNIDS[cls] / f"{i}.png", colour)
    samples, keep = prepare_samples("imagenet-a", root)
    assert keep == a_index
    assert sorted(t for _, t in samples) == sorted(a_index.index(cls) for cls, _ in cases)
    out = evaluate("imagenet-a", NearestColour(), samples, TRANSFORM, keep, OPTS)
    assert out.metrics == pytest.approx({"top1": 50.0, "top5": 75.0})
    # the same by an independent float64 ranking over the 200 A classes
    logits = _restricted_logits([c for _, c in cases], a_index)
    ranks = [int((logits[i] > logits[i, a_index.index(cls)]).sum()) for i, (cls, _) in enumerate(cases)]
    assert ranks[0] == 0 and ranks[1] == 1 and ranks[2] == 0 and ranks[3] >= 5
    # without the restriction, the image coloured 7 would be predicted as class 7 (not an A class)
    unrestricted = evaluate("imagenet-a", NearestColour(), samples, TRANSFORM, list(range(1000)), OPTS)
    assert unrestricted.metrics["top1"] == 0.0


def test_imagenet_o_detection_against_sklearn(tmp_path):
    o_wnids = embedded_wnids("imagenet_o")
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
    samples, keep = prepare_samples("imagenet-o", ood_root, val_root)
    assert keep == o_index and len(samples) == 11 and sum(t for _, t in samples) == 6
    out = evaluate("imagenet-o", NearestColour(), samples, TRANSFORM, keep, OPTS)
    assert out.counts == {"num_in_distribution": 5, "num_ood": 6} and out.num_images == 11

    logits = _restricted_logits([c for _, c in in_dist + ood], o_index)
    prob = np.exp(logits - logits.max(1, keepdims=True))
    score = -(prob / prob.sum(1, keepdims=True)).max(1)
    is_ood = np.array([0] * 5 + [1] * 6, dtype=bool)
    assert np.diff(np.sort(score)).min() > 1e-3  # no near-ties that float32 could order differently
    assert 50 < 100 * roc_auc_score(is_ood, score) < 100  # the construction is neither trivial nor inverted
    assert out.metrics["aupr"] == pytest.approx(100 * average_precision_score(is_ood, score), abs=1e-6)
    assert out.metrics["auroc"] == pytest.approx(100 * roc_auc_score(is_ood, score), abs=1e-6)
    assert out.metrics["fpr95"] == pytest.approx(_fpr95_brute_force(score, is_ood), abs=1e-6)


# ---------------------------------------------------------------- layout errors and unreadable images


def test_layout_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(LayoutError, match="data root not found: .*nowhere"):
        prepare_samples("imagenet-a", tmp_path / "nowhere")
    a_wnids = embedded_wnids("imagenet_a")
    root = _folders(tmp_path / "a", list(a_wnids[1:]) + ["n99999999"])
    with pytest.raises(LayoutError, match=rf"200 ImageNet-A wnid.*missing 1 .*{a_wnids[0]}.*unexpected 1 .*n99999999"):
        prepare_samples("imagenet-a", root)
    (root / "n99999999").rmdir()
    (root / a_wnids[0]).mkdir()
    with pytest.raises(LayoutError, match="no images"):
        prepare_samples("imagenet-a", root)
    wnid_root = _folders(tmp_path / "val", WNIDS)
    with pytest.raises(LayoutError, match="folders named 0..999.*missing 1000.*did you mean --set imagenet\\?"):
        prepare_samples("imagenet-v2", wnid_root)
    with pytest.raises(LayoutError, match="--in-dist is required"):
        prepare_samples("imagenet-o", _folders(tmp_path / "o", embedded_wnids("imagenet_o")))
    with pytest.raises(LayoutError, match="did you mean --set imagenet-a"):
        prepare_samples("imagenet-o", root, in_dist=wnid_root)


def test_cli_fails_cleanly_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "res.json"
    assert main(["--set", "imagenet", "--data", str(tmp_path / "missing"), "--model", "test_resnet",
                 "--out", str(out), "--no-progress"]) == 2
    assert "data root not found" in capsys.readouterr().err and not out.exists()

    root = _folders(tmp_path / "v2", [str(i) for i in range(1000)])
    _png(root / "3" / "good.png", 3)
    (root / "4" / "broken.png").write_bytes(b"not a png")
    args = ["--set", "imagenet-v2", "--data", str(root), "--model", "test_resnet", "--input-size", "3", "8", "8",
            "--workers", "0", "--no-progress", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"cannot read image {root / '4' / 'broken.png'}" in err and "--skip-bad" in err and not out.exists()
    with pytest.raises(UnreadableImageError):
        evaluate("imagenet-v2", NearestColour(), prepare_samples("imagenet-v2", root)[0], TRANSFORM, None, OPTS)

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


def test_cli_imagenet_v2_with_timm_model_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=1000).eval()
    ckpt = tmp_path / "test_resnet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
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
    assert result["metrics"] == pytest.approx({"top1": 50.0, "top5": 100.0 * top5 / 6})
    meta = result["meta"]
    assert meta["set"] == "imagenet-v2" and meta["variant"] == "top-images"
    assert meta["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["num_images"] == 6 and meta["num_skipped"] == 0
    assert meta["data_config"]["input_size"] == [3, 32, 32] and meta["data_config"]["mean"] == [0.5] * 3
    assert meta["seconds"] > 0 and meta["images_per_second"] > 0
