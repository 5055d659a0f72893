"""ImageNet training script: the learning-rate schedule, the config file and a CPU smoke run on a tiny generated
ImageFolder (train a few steps, stop, resume, finish, evaluate); bf16 + channels_last; 2-process DDP (gloo)."""
from __future__ import annotations

import argparse
import csv
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import backbones.train_imagenet as train_imagenet
from backbones.train_imagenet import DEFAULTS, build_config, main, reference_lr, reference_scheduler
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


# DARTS cells of skip connections and pooling: few layers (0.15 s a training step on one CPU thread, a third of
# genas_c100's), still the DARTS ImageNet network (stems, preprocessing convs, reductions, auxiliary head)
LIGHT_GENOTYPE = ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1), ('avg_pool_3x3', 0), ('skip_connect', 1), "
                  "('skip_connect', 0), ('max_pool_3x3', 1), ('skip_connect', 0), ('skip_connect', 1)], "
                  "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('avg_pool_3x3', 1), ('skip_connect', 2), "
                  "('max_pool_3x3', 1), ('skip_connect', 2), ('skip_connect', 3), ('skip_connect', 2), "
                  "('skip_connect', 3)], reduce_concat=range(2, 6))")


@pytest.fixture
def stripes(tmp_path: Path) -> Path:
    """A separable ImageFolder: horizontal vs vertical stripes (random period 6-11 px and phase, pixel noise),
    32 train / 8 val images per class, 64x64 grey PNG."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    for split, count in (("train", 32), ("val", 8)):
        for label, name in enumerate(("horizontal", "vertical")):
            folder = tmp_path / "stripes" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                period = int(rng.integers(6, 12))
                bright = ((yy if label == 0 else xx) + rng.integers(0, period)) % period < period // 2
                img = np.clip(28 + 200 * bright + rng.normal(0, 20, bright.shape), 0, 255).astype(np.uint8)
                Image.fromarray(np.repeat(img[..., None], 3, -1)).save(folder / f"{i}.png")
    return tmp_path / "stripes"


def test_reference_lr_schedule():
    # warm-up (epoch + 1) / 5 of 0.5, then linear decay from 0.5 to 0 at epoch 250
    assert reference_lr(0, 0.5, 250, 5) == pytest.approx(0.1)
    assert reference_lr(4, 0.5, 250, 5) == pytest.approx(0.5)
    assert reference_lr(5, 0.5, 250, 5) == pytest.approx(0.5)
    assert reference_lr(127, 0.5, 250, 5) == pytest.approx(0.5 * 123 / 245)
    assert reference_lr(249, 0.5, 250, 5) == pytest.approx(0.5 / 245)


def test_reference_scheduler_is_a_torch_lambdalr_giving_the_schedule():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = reference_scheduler(optimizer, epochs=250, warmup_epochs=5)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    lrs = []
    for _ in range(250):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([reference_lr(e, 0.5, 250, 5) for e in range(250)], rel=1e-12)
    assert lrs[:6] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.5]) and lrs[-1] == pytest.approx(0.5 / 245)
    # its state (last_epoch) restores the schedule in a fresh scheduler, as --resume does
    fresh_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    fresh = reference_scheduler(fresh_opt, epochs=10, warmup_epochs=2)
    for _ in range(3):
        fresh_opt.step()
        fresh.step()
    again_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    again = reference_scheduler(again_opt, epochs=10, warmup_epochs=2)
    again_opt.load_state_dict(fresh_opt.state_dict())
    again.load_state_dict(fresh.state_dict())
    again_opt.step()
    again.step()
    assert again_opt.param_groups[0]["lr"] == pytest.approx(0.5 * (10 - 4) / 8)


def test_label_smoothing_is_torch_cross_entropy():
    logits, labels = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    loss = train_imagenet.build_criterion(DEFAULTS)(logits, labels)  # the recipe's loss, label_smoothing 0.1
    assert DEFAULTS["label_smoothing"] == 0.1
    log_p = torch.log_softmax(logits, 1)[0]
    # (1 - 0.1) * NLL of the label + 0.1 * mean NLL over the 3 classes
    assert loss.item() == pytest.approx(-(0.9 * log_p[0] + 0.1 * log_p.mean()).item(), rel=1e-6)


def test_config_file_holds_reference_recipe():
    args = argparse.Namespace(config=str(REPO / "configs/imagenet/genas_c100.yaml"), lr=None, epochs=3)
    cfg = build_config(args)
    assert cfg["model"] == "genas_c100" and cfg["epochs"] == 3  # the command line wins over the file
    assert (cfg["lr"], cfg["batch_size"], cfg["weight_decay"], cfg["warmup_epochs"]) == (0.5, 1024, 3e-5, 5)
    assert (cfg["label_smoothing"], cfg["auxiliary_weight"], cfg["grad_clip"]) == (0.1, 0.4, 5.0)
    assert set(cfg) == set(DEFAULTS)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    """``weight_decay: 3e-5`` is a string for YAML 1.1 (PyYAML's safe_load): the project's loader reads a float."""
    config = tmp_path / "wd.yaml"
    config.write_text("weight_decay: 3e-5\nlr: 5e-1\n")
    cfg = build_config(argparse.Namespace(config=str(config)))
    assert cfg["weight_decay"] == 3e-5 and isinstance(cfg["weight_decay"], float) and cfg["lr"] == 0.5


def test_unknown_config_key_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'"):
        build_config(argparse.Namespace(config=str(bad)))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _final_model(out: Path, **kwargs) -> torch.nn.Module:
    """The run's ``model_final.pth`` in a timm model (``genas_c100`` C=8 unless ``kwargs`` say otherwise)."""
    name = "darts_imagenet" if "genotype" in kwargs else "genas_c100"
    return timm.create_model(name, C=8, num_classes=2, pretrained=True, **kwargs,
                             pretrained_cfg_overlay=dict(file=str(out / "model_final.pth"), num_classes=2))


def _top1_and_loss_by_hand(model: torch.nn.Module, val_root: Path) -> tuple[float, float]:
    """Top-1 (percent) and mean cross-entropy of ``model`` on ``val_root``: the eval transform of its data config
    at 64 px, one image at a time."""
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    model.eval()
    transform = create_transform(**dict(resolve_data_config(model=model), input_size=(3, 64, 64)), is_training=False)
    hits, losses = 0, []
    with torch.no_grad():
        for image, label in ImageFolder(str(val_root), transform=transform):
            logits = model(image[None])[0]
            hits += int(logits.argmax()) == label
            losses.append(float(torch.nn.functional.cross_entropy(logits[None], torch.tensor([label]))))
    return 100 * hits / len(losses), sum(losses) / len(losses)


def _same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same training: weights, optimizer, schedule and RNG states bit for bit, the same
    logged numbers (the throughput column aside) and results."""
    sa, sb = load_checkpoint(a / "last.pth"), load_checkpoint(b / "last.pth")
    assert sa["model"].keys() == sb["model"].keys()
    assert [k for k in sa["model"] if not torch.equal(sa["model"][k], sb["model"][k])] == []
    momenta = [(x["momentum_buffer"], y["momentum_buffer"])
               for x, y in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values())]
    assert len(momenta) == len(sa["optimizer"]["state"]) == len(sb["optimizer"]["state"]) > 0
    assert all(torch.equal(x, y) for x, y in momenta)
    assert sa["scheduler"] == sb["scheduler"] and (sa["step"], sa["epoch"]) == (sb["step"], sb["epoch"])
    assert torch.equal(sa["rng"][0]["torch_rng"], sb["rng"][0]["torch_rng"])
    fa, fb = load_checkpoint(a / "model_final.pth"), load_checkpoint(b / "model_final.pth")
    assert all(torch.equal(fa["state_dict"][k], fb["state_dict"][k]) for k in fa["state_dict"])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]  # noqa: E731
    assert strip(_rows(a / "train_log.csv")) == strip(_rows(b / "train_log.csv"))
    assert _rows(a / "eval_log.csv") == _rows(b / "eval_log.csv")
    assert read_result(a / "result.json")["metrics"] == read_result(b / "result.json")["metrics"]


def test_smoke_train_stop_resume_finish(tiny_imagefolder, tmp_path, capsys, monkeypatch):
    """A run stopped after step 1, resumed in this process to step 2 and then in a fresh process (as a user
    restarts it) to the end equals the uninterrupted run bit for bit. Drop-path (0.1 in epoch 1) draws from the
    global generator, and the augmentation (in a loader worker) from its own, so both have to be right."""
    out, full = tmp_path / "run", tmp_path / "full"
    # 8 train images / batch 4 = 2 steps per epoch, 2 epochs = 4 steps; C=8 keeps it fast
    args = ["--data", str(tiny_imagefolder), "--model", "genas_c100", "--C", "8", "--epochs", "2",
            "--warmup-epochs", "1", "--batch-size", "4", "--input-size", "64", "--workers", "1", "--drop-path", "0.2",
            "--device", "cpu", "--log-every", "1", "--no-progress"]
    common = args + ["--output", str(out)]
    assert main(args + ["--output", str(full)]) == 0  # uninterrupted

    assert main(common + ["--max-steps", "1"]) == 0
    state = load_checkpoint(out / "last.pth")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (1, 0, 1)
    rows = _rows(out / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1]
    assert math.isfinite(float(rows[0]["loss"])) and math.isfinite(float(rows[0]["loss_aux"]))
    assert float(rows[0]["lr"]) == pytest.approx(0.5)
    assert not (out / "result.json").exists()
    # the scheduler (not yet stepped: the stop is inside epoch 0) and one RNG state per rank, CPU ByteTensors
    assert state["scheduler"]["last_epoch"] == 0 and state["scheduler"]["base_lrs"] == [0.5]
    assert len(state["rng"]) == 1
    assert state["rng"][0]["torch_rng"].dtype == torch.uint8 and state["rng"][0]["torch_rng"].device.type == "cpu"

    assert main(common) == 2  # refuses to overwrite a run without --resume
    assert "--resume" in capsys.readouterr().err

    # --resume reads the checkpoint on the CPU (torch.set_rng_state takes only CPU tensors, so a GPU run's
    # map_location=<cuda> crashed) and restores the saved generator state
    loads = []
    monkeypatch.setattr(train_imagenet, "load_checkpoint",
                        lambda path, map_location: loads.append(map_location) or load_checkpoint(path, map_location))
    restored = []
    real_set_rng_states = train_imagenet.set_rng_states  # recorded, then really restored
    monkeypatch.setattr(train_imagenet, "set_rng_states",
                        lambda s, device: restored.append(s["torch_rng"].clone()) or real_set_rng_states(s, device))
    assert main(common + ["--resume", "--max-steps", "2"]) == 0
    assert loads == ["cpu"] and len(restored) == 1 and torch.equal(restored[0], state["rng"][0]["torch_rng"])
    assert [int(r["step"]) for r in _rows(out / "train_log.csv")] == [1, 2]  # continued from the saved step

    env = {**os.environ, "PYTHONPATH": str(REPO)}  # OMP_NUM_THREADS: the suite's (conftest), as in this process
    proc = subprocess.run([sys.executable, "backbones/train_imagenet.py", *common, "--resume"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_run(out, full)

    rows = _rows(out / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.5, 0.5, 0.5, 0.5])  # epoch 1: 0.5 * (2-1)/(2-1)
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    evals = _rows(out / "eval_log.csv")
    assert [int(r["epoch"]) for r in evals] == [0, 1]
    state = load_checkpoint(out / "last.pth")
    assert (state["step"], state["epoch"]) == (4, 2)
    assert state["scheduler"]["last_epoch"] == 2
    result = read_result(out / "result.json")
    assert result["kind"] == "imagenet" and result["model"] == "genas_c100"
    # the reported top-1 and loss are those of the final weights, evaluated here image by image
    top1, loss = _top1_and_loss_by_hand(_final_model(out), tiny_imagefolder / "val")
    assert result["metrics"]["top1"] == float(evals[-1]["top1"]) == top1
    assert float(evals[-1]["loss"]) == pytest.approx(loss, rel=1e-5)
    assert result["metrics"]["top5"] == 100.0  # 2 classes

    # the final weights load into a timm model (the overlay's num_classes tells timm the head matches)
    model = timm.create_model("genas_c100", C=8, num_classes=2, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(out / "model_final.pth"), num_classes=2))
    assert torch.equal(model.classifier.weight, state["model"]["classifier.weight"])
    assert torch.equal(model.cells[13]._ops[1].op[1].weight, state["model"]["cells.13._ops.1.op.1.weight"])


def test_training_learns_a_separable_task(stripes, tmp_path):
    """The reference recipe (SGD, label smoothing, auxiliary head, RandomResizedCrop + flip + colour jitter) on
    stripes: top-1 goes from chance (the untrained network: 50 %) to 14 of the 16 validation images or more
    (measured: 93.75-100 % for seeds 0-3, 64 steps)."""
    out = tmp_path / "run"
    assert main(["--data", str(stripes), "--model", "darts_imagenet", "--genotype", LIGHT_GENOTYPE, "--C", "8",
                 "--epochs", "8", "--warmup-epochs", "0", "--batch-size", "8", "--lr", "0.03", "--input-size", "64",
                 "--workers", "0", "--device", "cpu", "--log-every", "1", "--no-progress", "--output", str(out)]) == 0
    torch.manual_seed(0)  # the trainer's seed: its initial weights
    untrained = timm.create_model("darts_imagenet", genotype=LIGHT_GENOTYPE, C=8, num_classes=2, auxiliary=True)
    top1_before, loss_before = _top1_and_loss_by_hand(untrained, stripes / "val")
    top1, loss = _top1_and_loss_by_hand(_final_model(out, genotype=LIGHT_GENOTYPE), stripes / "val")
    evals = _rows(out / "eval_log.csv")
    assert read_result(out / "result.json")["metrics"]["top1"] == float(evals[-1]["top1"]) == top1
    assert top1_before <= 62.5 and top1 >= 87.5 and top1 - top1_before >= 25
    assert loss < loss_before / 2 and float(evals[0]["top1"]) <= 62.5  # ln 2 = 0.69 before
    losses = [float(r["loss"]) for r in _rows(out / "train_log.csv")]
    assert sum(losses[-8:]) < 0.6 * sum(losses[:8])  # the last epoch's training loss against the first's (floor ~0.2)


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
    assert main(["--data", str(tiny_imagefolder), "--model", "darts_imagenet", "--genotype", "Genotype(normal=[",
                 "--output", str(tmp_path / "e"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: genotype: cannot parse genotype string") and err.count("\n") == 1
    assert main(["--data", str(tiny_imagefolder), "--model", "genas_c100", "--C", "45", "--output",
                 str(tmp_path / "g"), "--device", "cpu"]) == 2  # the network's own check, as one line
    err = capsys.readouterr().err
    assert err.startswith("error: cannot build genas_c100:") and "even" in err and err.count("\n") == 1
    old = tmp_path / "old"  # a last.pth of the trainer before the scheduler / per-rank RNG states
    old.mkdir()
    torch.save({"config": {}, "model": {}, "rng": {"torch_rng": torch.get_rng_state()}}, old / "last.pth")
    assert main(["--data", str(tiny_imagefolder), "--output", str(old), "--resume", "--device", "cpu", "--epochs",
                 "2", "--warmup-epochs", "1", "--batch-size", "4", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "written by an older version of this trainer" in err and err.count("\n") == 1
    if not torch.cuda.is_available():
        assert main(["--data", str(tiny_imagefolder), "--output", str(tmp_path / "f"), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "acefg")


def test_bf16_channels_last_loss_within_tolerance_of_fp32(tiny_imagefolder, tmp_path):
    """The GPU options on CPU: bf16 autocast + channels_last train with finite losses and an NHWC model, and the
    first step's losses (the same weights and images) are within the README's tolerance of fp32's (channels_last
    too): 0.1 (measured 0.049 and 0.024 for the auxiliary head). Later steps are not compared: at initialization
    genas_c100 turns any rounding difference into a different trajectory (channels_last alone: 0.14 at step 2)."""
    runs = {}
    for name, extra in (("bf16", ["--amp", "bf16", "--max-steps", "2"]), ("fp32", ["--max-steps", "1"])):
        runs[name] = out = tmp_path / name
        assert main(["--data", str(tiny_imagefolder), "--model", "genas_c100", "--C", "8", "--epochs", "2",
                     "--warmup-epochs", "1", "--batch-size", "4", "--input-size", "64", "--workers", "0",
                     "--device", "cpu", "--log-every", "1", "--no-progress", "--output", str(out), "--channels-last",
                     *extra]) == 0
    rows = _rows(runs["bf16"] / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2] and all(math.isfinite(float(r["loss"])) for r in rows)
    state = load_checkpoint(runs["bf16"] / "last.pth")
    assert state["config"]["amp"] == "bf16" and state["config"]["channels_last"] is True
    stem = state["model"]["stem0.0.weight"]
    assert stem.dtype == torch.float32  # autocast: the weights stay fp32
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()
    fp32 = _rows(runs["fp32"] / "train_log.csv")[0]
    gaps = [abs(float(rows[0][key]) - float(fp32[key])) for key in ("loss", "loss_aux")]
    assert 0 < min(gaps) and max(gaps) <= 0.1, gaps  # > 0: bf16 did compute


def test_seeded_augmentation_is_a_function_of_the_key():
    """Each image's crop / flip / jitter comes from generators seeded by its key (the trainer derives it from
    seed, epoch and image index), whichever process loads it; the process's own generators are left as they were."""
    from timm.data import create_transform

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    transform = create_transform(64, is_training=True, color_jitter=(0.4, 0.4, 0.4, 0.2))  # the trainer's

    class Folder:  # three copies of one image, transformed when fetched (as an ImageFolder)
        def __len__(self) -> int:
            return 3

        def __getitem__(self, index: int):
            return transform(image), 1

    data = train_imagenet.SeededAugmentation(Folder())
    torch.manual_seed(5)
    states = torch.get_rng_state(), random.getstate()
    first = data[(0, 7)][0]
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert torch.equal(first, data[(2, 7)][0])  # same seed, same augmentation
    others = [data[(0, seed)][0] for seed in (8, 9, 10)]
    assert all(not torch.equal(first, other) for other in others)
    assert train_imagenet._epoch_keys(6, 0, 0, train_imagenet.DistInfo(0, 0, 1, torch.device("cpu"))) != \
        train_imagenet._epoch_keys(6, 1, 0, train_imagenet.DistInfo(0, 0, 1, torch.device("cpu")))


def test_ddp_two_gloo_processes(tiny_imagefolder, tmp_path):
    """torchrun with 2 CPU processes (gloo): the global batch of 4 is split 2 + 2, one epoch of 2 steps, the
    evaluation is sharded over the ranks and all-reduced: the written top-1 equals a 1-process evaluation of
    the final weights, and both ranks' RNG states are in the checkpoint."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "backbones/train_imagenet.py", "--data", str(tiny_imagefolder), "--model", "genas_c100", "--C", "8",
           "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4", "--input-size", "64", "--workers", "0",
           "--device", "cpu", "--log-every", "1", "--no-progress", "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(out / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2] and all(math.isfinite(float(r["loss"])) for r in rows)
    state = load_checkpoint(out / "last.pth")
    assert (state["step"], state["epoch"]) == (2, 1)
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch_rng"], state["rng"][1]["torch_rng"])
    result = read_result(out / "result.json")

    model = timm.create_model("genas_c100", C=8, num_classes=2, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(out / "model_final.pth"), num_classes=2))
    cfg = dict(DEFAULTS, workers=0, input_size=64, amp=None, channels_last=False)
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder
    data_cfg = dict(resolve_data_config(model=model), input_size=(3, 64, 64))
    val = ImageFolder(str(tiny_imagefolder / "val"), transform=create_transform(**data_cfg, is_training=False))
    info = train_imagenet.DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    single = train_imagenet.evaluate(model, val, cfg, info, batch_size=2)
    assert result["metrics"]["top1"] == pytest.approx(single["top1"], abs=1e-9)
    evals = _rows(out / "eval_log.csv")
    assert float(evals[-1]["loss"]) == pytest.approx(single["loss"], rel=1e-5)  # a continuous value, all 4 images
    assert result["metrics"]["top5"] == 100.0
