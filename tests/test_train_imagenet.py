"""ImageNet training script: the learning-rate schedule, the config file and a CPU smoke run on a tiny generated
ImageFolder (train a few steps, stop, resume, finish, evaluate)."""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from backbones.train_imagenet import DEFAULTS, build_config, main, reference_lr
from genas.core.config import ConfigError
from genas.core.io import load_checkpoint
from genas.core.results import read_result

REPO = Path(__file__).resolve().parents[1]



@pytest.fixture
def tiny_imagefolder(tmp_path: Path) -> Path:
    """2 classes x 4 train / 2 val images, 64x64 PNG: smooth colour gradients with noise, class-dependent hue."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    for split, count in (("train", 4), ("val", 2)):
        for label, name in enumerate(("n01440764", "n01443537")):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                base = np.stack([xx, yy, (xx + yy) / 2], -1)[..., [label, 1 - label, 2]]
                img = np.clip(base * 200 + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    return tmp_path / "data"


def test_reference_lr_schedule():
    # warm-up (epoch + 1) / 5 of 0.5, then linear decay from 0.5 to 0 at epoch 250
    assert reference_lr(0, 0.5, 250, 5) == pytest.approx(0.1)
    assert reference_lr(4, 0.5, 250, 5) == pytest.approx(0.5)
    assert reference_lr(5, 0.5, 250, 5) == pytest.approx(0.5)
    assert reference_lr(127, 0.5, 250, 5) == pytest.approx(0.5 * 123 / 245)
    assert reference_lr(249, 0.5, 250, 5) == pytest.approx(0.5 / 245)


def test_config_file_holds_reference_recipe():
    args = argparse.Namespace(config=str(REPO / "configs/imagenet/genas_c100.yaml"), lr=None, epochs=3)
    cfg = build_config(args)
    assert cfg["model"] == "genas_c100" and cfg["epochs"] == 3  # the command line wins over the file
    assert (cfg["lr"], cfg["batch_size"], cfg["weight_decay"], cfg["warmup_epochs"]) == (0.5, 1024, 3e-5, 5)
    assert (cfg["label_smoothing"], cfg["auxiliary_weight"], cfg["grad_clip"]) == (0.1, 0.4, 5.0)
    assert set(cfg) == set(DEFAULTS)


def test_unknown_config_key_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'"):
        build_config(argparse.Namespace(config=str(bad)))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_smoke_train_stop_resume_finish(tiny_imagefolder, tmp_path, capsys):
    out = tmp_path / "run"
    # 8 train images / batch 4 = 2 steps per epoch, 2 epochs = 4 steps; C=8 keeps it fast
    common = ["--data", str(tiny_imagefolder), "--model", "genas_c100", "--C", "8", "--epochs", "2",
              "--warmup-epochs", "1", "--batch-size", "4", "--input-size", "64", "--workers", "0",
              "--device", "cpu", "--log-every", "1", "--no-progress", "--output", str(out)]
    assert main(common + ["--max-steps", "1"]) == 0
    state = load_checkpoint(out / "last.pth")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (1, 0, 1)
    rows = _rows(out / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1]
    assert math.isfinite(float(rows[0]["loss"])) and math.isfinite(float(rows[0]["loss_aux"]))
    assert float(rows[0]["lr"]) == pytest.approx(0.5)
    assert not (out / "result.json").exists()

    assert main(common) == 2  # refuses to overwrite a run without --resume
    assert "--resume" in capsys.readouterr().err

    assert main(common + ["--resume"]) == 0
    rows = _rows(out / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # continued from the saved step
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.5, 0.5, 0.5, 0.5])  # epoch 1: 0.5 * (2-1)/(2-1)
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    evals = _rows(out / "eval_log.csv")
    assert [int(r["epoch"]) for r in evals] == [0, 1]
    state = load_checkpoint(out / "last.pth")
    assert (state["step"], state["epoch"]) == (4, 2)
    result = read_result(out / "result.json")
    assert result["kind"] == "imagenet" and result["model"] == "genas_c100"
    # 4 val images, 2 classes: top-1 is a multiple of 25 %, top-5 covers both classes
    assert result["metrics"]["top1"] in (0.0, 25.0, 50.0, 75.0, 100.0) and result["metrics"]["top5"] == 100.0
    assert float(evals[-1]["top1"]) == result["metrics"]["top1"]

    # the final weights load into a timm model (the overlay's num_classes tells timm the head matches)
    model = timm.create_model("genas_c100", C=8, num_classes=2, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(out / "model_final.pth"), num_classes=2))
    assert torch.equal(model.classifier.weight, state["model"]["classifier.weight"])
    assert torch.equal(model.cells[13]._ops[1].op[1].weight, state["model"]["cells.13._ops.1.op.1.weight"])


def test_clear_errors(tiny_imagefolder, tmp_path, capsys):
    assert main(["--output", str(tmp_path / "a"), "--device", "cpu"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["--data", str(tiny_imagefolder), "--model", "resnet50", "--output", str(tmp_path / "b")]) == 2
    assert "not a DARTS-space model" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "missing"), "--output", str(tmp_path / "c"), "--device", "cpu",
                 "--epochs", "2", "--warmup-epochs", "1"]) == 2
    assert "train" in capsys.readouterr().err
    assert main(["--data", str(tiny_imagefolder), "--output", str(tmp_path / "d"), "--resume", "--device", "cpu",
                 "--epochs", "2", "--warmup-epochs", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
