"""MMSegmentation DeepLabv3 with GeNAS backbones: the backbone wrapper, the recipe configs, and a real train /
test run on the one Cityscapes frame of ../shared/data/cityscapes_tiny (CPU, 64x128 input, a few iterations), also
under torchrun with 2 gloo CPU processes (--launcher pytorch)."""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mmseg.models", reason="mmsegmentation with compiled mmcv ops is not installed "
                                           "(scripts/bootstrap.sh all)")
import timm  # noqa: E402
from mmengine.config import Config  # noqa: E402
from PIL import Image  # noqa: E402

import backbones  # noqa: E402,F401
from backbones.freeze import FreezeError  # noqa: E402
from backbones.names import ModelNameError  # noqa: E402
from genas.core.results import read_result  # noqa: E402
from segmentation import runner as seg_runner  # noqa: E402
from segmentation import test as seg_test  # noqa: E402
from segmentation import train as seg_train  # noqa: E402
from segmentation.backbone import BackboneConfigError, GeNASBackbone  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "segmentation"
RECIPE = CONFIGS / "deeplabv3_genas_c100_512x1024_80k_cityscapes.py"
FRAME = "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
LABELS = "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png"
ITERS = 8


# --------------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------------
def test_backbone_levels_freeze_and_norm_eval():
    torch.manual_seed(0)
    net = GeNASBackbone("genas_c100", frozen_stages=1, norm_eval=True)
    x = torch.randn(2, 3, 32, 64)
    feats = net(x)
    # genas_c100 (C=46): levels at strides 4/8/16/32 with C, 4C, 8C, 16C channels
    assert [tuple(f.shape) for f in feats] == [(2, 46, 8, 16), (2, 184, 4, 8), (2, 368, 2, 4), (2, 736, 1, 2)]

    # frozen_stages=1 freezes exactly the parameters level 1 depends on (read from autograd on an unfrozen twin)
    twin = GeNASBackbone("genas_c100")
    params = dict(twin.timm_model.named_parameters())
    grads = torch.autograd.grad(twin(x)[1].sum(), list(params.values()), allow_unused=True)
    needed = {n for n, g in zip(params, grads) if g is not None}
    frozen = {n for n, p in net.timm_model.named_parameters() if not p.requires_grad}
    assert frozen == needed and len(frozen) < len(params)
    assert any(n.startswith("model.cells.3.") for n in frozen) and not any(
        n.startswith("model.cells.4.") for n in frozen)

    # train(): frozen modules and, with norm_eval, every BatchNorm stay in eval; running stats do not move
    net.train()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert net.frozen_modules and not any(net.timm_model.get_submodule(n).training for n in net.frozen_modules)
    before = [m.running_mean.clone() for m in bns]
    net(x)
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns))

    # multi-GPU runs convert the BatchNorms to SyncBN (sync_bn='torch'): the frozen ones must stay in eval
    sync = torch.nn.SyncBatchNorm.convert_sync_batchnorm(GeNASBackbone("genas_c100", frozen_stages=0)).train()
    stem0_bn, stem1_bn = sync.timm_model.model.stem0[1], sync.timm_model.model.stem1[2]  # level 0 frozen
    assert isinstance(stem0_bn, torch.nn.SyncBatchNorm) and not stem0_bn.training and stem1_bn.training

    trainable = GeNASBackbone("genas_c100", out_indices=(0, 1, 2)).train()
    assert all(p.requires_grad for p in trainable.parameters())
    assert any(m.training for m in trainable.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # out_indices stops at level 2: the cells after the second reduction (9..13) are pruned
    assert len(trainable.timm_model.model.cells) == 9
    assert [f.shape[1] for f in trainable(x)] == [46, 184, 368]


def test_backbone_loads_imagenet_weights_file(tmp_path):
    torch.manual_seed(1)
    classifier = timm.create_model("genas_c100", num_classes=1000)
    # as the reference trainer saves it: DDP prefix, wrapped in 'state_dict'
    state = {f"module.{k}": v for k, v in classifier.state_dict().items()}
    path = tmp_path / "genas_c100_imagenet.pth"
    torch.save({"state_dict": state, "epoch": 250}, path)
    net = GeNASBackbone("genas_c100", weights=str(path))
    loaded = net.timm_model.model.state_dict()
    for key in ("stem0.0.weight", "cells.3.preprocess1.op.1.weight", "cells.13._ops.7.op.1.weight"):
        assert torch.equal(loaded[key], classifier.state_dict()[key]), key
    assert net.is_init  # mmengine's init_weights must not overwrite the ImageNet weights

    with pytest.raises(BackboneConfigError, match="weights file not found"):
        GeNASBackbone("genas_c100", weights=str(tmp_path / "missing.pth"))


def test_backbone_wrong_model_name_lists_close_names():
    with pytest.raises(ModelNameError, match=r"backbone model_name='genas_c1000' is not a timm model.*'genas_c100'"):
        GeNASBackbone("genas_c1000")


def test_backbone_frozen_stages_errors_name_the_setting():
    with pytest.raises(FreezeError, match=r"frozen_stages=4: expected -1 \(nothing frozen\) or a feature level 0..3"):
        GeNASBackbone("genas_c100", frozen_stages=4)
    with pytest.raises(FreezeError, match=r"backbone frozen_stages=3: feature level 3 .* is not built"):
        GeNASBackbone("genas_c100", out_indices=(0, 1, 2), frozen_stages=3)
    assert issubclass(BackboneConfigError, seg_runner.UsageError) and issubclass(seg_runner.SetupError,
                                                                                 seg_runner.UsageError)


def test_backbone_channels_last_computes_the_same_features():
    torch.manual_seed(0)
    plain = GeNASBackbone("genas_c100", C=16).eval()
    nhwc = GeNASBackbone("genas_c100", C=16, channels_last=True).eval()
    nhwc.load_state_dict(plain.state_dict())
    assert nhwc.timm_model.model.stem0[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(plain(x), nhwc(x)):
            assert b.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Recipe configs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(CONFIGS.glob("deeplabv3_*.py")), ids=lambda p: p.stem)
def test_recipe_configs(path):
    cfg = Config.fromfile(str(path))
    assert cfg.custom_imports.imports == ["segmentation.backbone"]
    backbone, decode, aux = cfg.model.backbone, cfg.model.decode_head, cfg.model.auxiliary_head
    assert backbone.type == "GeNASBackbone" and timm.is_model(backbone.model_name)
    model = timm.create_model(backbone.model_name, features_only=True, out_indices=backbone.out_indices)
    channels = model.feature_info.channels()
    # the heads read the levels they say, with the channels the backbone gives there
    assert (decode.type, aux.type) == ("ASPPHead", "FCNHead")
    assert decode.in_channels == channels[decode.in_index] and aux.in_channels == channels[aux.in_index]
    assert aux.in_index == decode.in_index - 1 and decode.in_index == len(channels) - 1
    # DeepLabv3's rate x output stride = 96 (12/24/36 at stride 8)
    stride = model.feature_info.reduction()[decode.in_index]
    assert [r * stride for r in decode.dilations[1:]] == [96, 192, 288]
    # inputs as the ImageNet training saw them: 255 x the timm pretrained_cfg mean / std, RGB
    pre = cfg.model.data_preprocessor
    assert pre.mean == [255 * m for m in model.pretrained_cfg["mean"]] == [0.0, 0.0, 0.0]
    assert pre.std == [255 * s for s in model.pretrained_cfg["std"]] and pre.bgr_to_rgb
    # MMSeg's DeepLabv3 Cityscapes recipe
    assert cfg.crop_size == (512, 1024) and pre.size == (512, 1024)
    assert cfg.optimizer.lr == 0.01 and cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == 5e-4
    assert cfg.train_cfg.max_iters == 80000 and cfg.param_scheduler[0].type == "PolyLR"
    assert cfg.param_scheduler[0].end == 80000 and cfg.param_scheduler[0].power == 0.9
    assert cfg.train_dataloader.dataset.type == "CityscapesDataset" and decode.num_classes == aux.num_classes == 19


# --------------------------------------------------------------------------------------------------
# Train / test on the real frame
# --------------------------------------------------------------------------------------------------
AUGMENT = """[
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(48, 112)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]"""
PLAIN = """[
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='PackSegInputs'),
]"""


def _tiny_config(path: Path, data_root: Path, iters: int, train_pipeline: str = AUGMENT, extra: str = "") -> Path:
    """The genas_c100 recipe (SGD lr 0.01, poly) on the one frame resized to 64x128; by default with the recipe's
    random crop (48x112, padded to 64x128 by the data preprocessor) and flip, so that a resumed run has random
    draws to replay. (At 32x64 the stride-32 level is 1x2 and the random-init backbone's first gradients
    explode through its BatchNorms.)"""
    path.write_text(f"""
_base_ = {str(RECIPE)!r}
data_root = {str(data_root)!r}
crop_size = (64, 128)
model = dict(data_preprocessor=dict(size=crop_size))
train_pipeline = {train_pipeline}
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
split = dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val')
# batch 2: ASPP's image-pooling BatchNorm needs more than one value per channel in training
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, data_prefix=split, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, data_prefix=split, pipeline=test_pipeline))
test_dataloader = val_dataloader
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end={iters}, by_epoch=False)]
train_cfg = dict(max_iters={iters}, val_interval={iters})
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval={iters}))
log_processor = dict(window_size=1)  # log every iteration's own loss
randomness = dict(seed=0)
{extra}
""")
    return path


def _cli(script: str, *argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python segmentation/<script> ...`` in a fresh process, as a user runs it (conftest's thread count)."""
    return subprocess.run([sys.executable, f"segmentation/{script}", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``segmentation/train.py`` run as a user runs it, in its own process: ITERS iterations on the frame."""
    from conftest import shared_path  # a module-scoped fixture cannot use the function-scoped `cityscapes_tiny`
    data_root = shared_path("cityscapes_tiny")
    tmp = tmp_path_factory.mktemp("seg")
    config = _tiny_config(tmp / "tiny.py", data_root, ITERS)
    work_dir = tmp / "train"
    proc = _cli("train.py", str(config), "--work-dir", str(work_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(config=config, work_dir=work_dir, data_root=data_root)


def _losses(work_dir: Path) -> list[float]:
    """Per-iteration training losses MMEngine logged in ``work_dir`` (all runs, oldest first)."""
    rows = [json.loads(line) for scalars in sorted(work_dir.glob("*/vis_data/scalars.json"))
            for line in scalars.read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    with seg_runner.mmengine_checkpoint_globals():
        return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def test_train_loss_goes_down_when_overfitting_the_frame(trained):
    losses = _losses(trained["work_dir"])
    assert len(losses) == ITERS and all(math.isfinite(v) for v in losses)
    # measured: 2.64 2.54 2.31 1.97 1.94 1.96 1.75 1.82 (last three / first three = 0.74)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.8 * first, losses


def _miou_from_label_map(pred: np.ndarray, gt: np.ndarray, num_classes: int = 19) -> tuple[float, float]:
    """mIoU and aAcc (percent) of one label map, ignoring 255, averaged over the classes present in the
    ground truth or the prediction (IoUMetric's nanmean)."""
    valid = gt != 255
    p, g = pred[valid].astype(np.int64), gt[valid].astype(np.int64)
    conf = np.bincount(g * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union  # nan where a class is neither in gt nor predicted
    return float(np.nanmean(iou) * 100), float(inter.sum() / valid.sum() * 100)


def test_trained_model_beats_the_untrained_one(trained):
    """The same network, randomly initialised as the run started (seed 0) and after ITERS iterations on the frame:
    the trained one's mIoU on the frame is at least 10 points higher (measured: 0.0 -> 12.76)."""
    from mmseg.apis import inference_model, init_model

    torch.manual_seed(0)
    untrained = init_model(str(trained["config"]), None, device="cpu")
    pred = inference_model(untrained, str(trained["data_root"] / FRAME)).pred_sem_seg.data[0].numpy()
    untrained_miou, _ = _miou_from_label_map(pred, np.array(Image.open(trained["data_root"] / LABELS)))
    trained_miou = read_result(trained["work_dir"] / seg_runner.RESULT_FILE)["metrics"]["mIoU"]
    assert trained_miou >= untrained_miou + 10, (untrained_miou, trained_miou)


def test_train_result_test_cli_and_inference_agree(trained, tmp_path):
    from mmseg.apis import inference_model, init_model

    work_dir = trained["work_dir"]
    train_result = read_result(work_dir / seg_runner.RESULT_FILE)
    assert train_result["kind"] == "segmentation" and train_result["model"] == "genas_c100"
    assert train_result["meta"]["iterations"] == ITERS
    # the crop that ran (the train pipeline's RandomCrop), not the config file's crop_size variable (64, 128)
    assert train_result["meta"]["crop_size"] == [48, 112]
    checkpoint = Path(train_result["meta"]["checkpoint"])
    assert checkpoint == work_dir / f"iter_{ITERS}.pth" and checkpoint.is_file()
    metrics = train_result["metrics"]
    assert set(metrics) == {"mIoU", "mAcc", "aAcc"}
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in metrics.values()), metrics

    # segmentation/test.py on the final checkpoint, in a fresh process (the checkpoint's message hub must unpickle
    # before any HistoryBuffer exists there), gives the final validation's numbers
    test_dir = tmp_path / "test"
    proc = _cli("test.py", str(trained["config"]), str(checkpoint), "--work-dir", str(test_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    test_result = read_result(test_dir / seg_runner.RESULT_FILE)
    assert test_result["metrics"] == metrics and test_result["meta"]["iterations"] == ITERS

    # inference returns a label map of the image size, whose mIoU recomputed here matches IoUMetric's
    with seg_runner.mmengine_checkpoint_globals():
        model = init_model(str(trained["config"]), str(checkpoint), device="cpu")
    frame = trained["data_root"] / FRAME
    pred = inference_model(model, str(frame)).pred_sem_seg.data
    gt = np.array(Image.open(trained["data_root"] / LABELS))
    assert pred.shape == (1, *gt.shape) == (1, 128, 256) and pred.dtype == torch.int64
    miou, aacc = _miou_from_label_map(pred[0].numpy(), gt)
    assert miou == pytest.approx(metrics["mIoU"], abs=0.01) and aacc == pytest.approx(metrics["aAcc"], abs=0.01)


def test_mmseg_own_test_tool_needs_and_works_with_the_checkpoint_globals(trained, tmp_path):
    """MMSeg's own ``tools/test.py`` in a fresh process (README, "With MMSegmentation's own tools"): bare, torch's
    weights-only load refuses the checkpoint's message hub; inside ``mmengine_checkpoint_globals()`` it loads the
    checkpoint and logs the final validation's mIoU."""
    import mmseg

    tool = Path(mmseg.__file__).parent / ".mim" / "tools" / "test.py"
    if not tool.is_file():
        pytest.skip(f"{tool} is not installed with this mmsegmentation")
    checkpoint = trained["work_dir"] / f"iter_{ITERS}.pth"
    miou = read_result(trained["work_dir"] / seg_runner.RESULT_FILE)["metrics"]["mIoU"]
    script = ("import runpy, sys\n"
              "from segmentation.runner import mmengine_checkpoint_globals\n"
              "sys.argv = [sys.argv[1], *sys.argv[2:]]\n"
              "if sys.argv[-1] == 'wrapped':\n"
              "    sys.argv.pop()\n"
              "    with mmengine_checkpoint_globals():\n"
              "        runpy.run_path(sys.argv[0], run_name='__main__')\n"
              "else:\n"
              "    runpy.run_path(sys.argv[0], run_name='__main__')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    logs = {mode: tmp_path / f"{mode}.log" for mode in ("bare", "wrapped")}
    runs = {}
    for mode, log in logs.items():  # side by side
        with open(log, "w") as out:
            runs[mode] = subprocess.Popen([sys.executable, "-c", script, str(tool), str(trained["config"]),
                                           str(checkpoint), "--work-dir", str(tmp_path / mode),
                                           *(["wrapped"] if mode == "wrapped" else [])],
                                          cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    for run in runs.values():
        run.wait(timeout=300)
    bare, wrapped = logs["bare"].read_text(), logs["wrapped"].read_text()
    assert runs["bare"].returncode != 0 and "Weights only load failed" in bare, bare[-3000:]
    assert runs["wrapped"].returncode == 0, wrapped[-3000:]
    assert f"mIoU: {miou:.4f}" in wrapped, wrapped[-3000:]


def test_checkpoint_globals_allow_exactly_the_statistics_methods():
    """What a checkpoint's message hub pickles as ``getattr(HistoryBuffer, 'min')`` resolves in a process where no
    HistoryBuffer was ever created (the class registry is empty there); any other getattr is refused."""
    from mmengine.logging import HistoryBuffer

    registry = HistoryBuffer._statistics_methods
    saved = dict(registry)
    registry.clear()  # as in a fresh process
    try:
        for name in ("min", "max", "mean", "current"):
            assert seg_runner._history_buffer_getattr(HistoryBuffer, name) is getattr(HistoryBuffer, name)
        for obj, name in ((HistoryBuffer, "update"), (HistoryBuffer, "__init__"), (os, "system")):
            with pytest.raises(__import__("pickle").UnpicklingError, match="only HistoryBuffer's statistics"):
                seg_runner._history_buffer_getattr(obj, name)
    finally:
        registry.update(saved)


def test_resume_after_the_end_revalidates(trained, tmp_path):
    """--resume on a finished run, in a fresh process, loads its last checkpoint (MMEngine's resume) and writes the
    same result again."""
    result = trained["work_dir"] / seg_runner.RESULT_FILE
    before = read_result(result)
    result.unlink()
    proc = _cli("train.py", str(trained["config"]), "--work-dir", str(trained["work_dir"]), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = read_result(result)
    assert after["metrics"] == before["metrics"] and after["meta"]["iterations"] == ITERS
    assert len(_losses(trained["work_dir"])) == ITERS  # resumed at the end: no training iteration ran again


def test_resumed_run_equals_the_uninterrupted_run(trained, tmp_path):
    """Stopped at ITERS / 2 (its checkpoint written, the schedule still the ITERS one) and resumed in a fresh
    process with ``--resume``: the final weights equal those of the uninterrupted ``trained`` run bit for bit. The
    run has random crops and flips (numpy draws) and the heads' dropout (torch draws)."""
    work_dir = tmp_path / "interrupted"
    half = ITERS // 2
    assert seg_train.main([str(trained["config"]), "--work-dir", str(work_dir),
                           "--cfg-options", f"train_cfg.max_iters={half}"]) == 0
    assert (work_dir / f"iter_{half}.pth").is_file()
    proc = _cli("train.py", str(trained["config"]), "--work-dir", str(work_dir), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _losses(work_dir) == _losses(trained["work_dir"])
    resumed, whole = _weights(work_dir / f"iter_{ITERS}.pth"), _weights(trained["work_dir"] / f"iter_{ITERS}.pth")
    assert resumed.keys() == whole.keys()
    different = [k for k in whole if not torch.equal(resumed[k], whole[k])]
    assert different == [], different[:5]


# --------------------------------------------------------------------------------------------------
# Clear errors
# --------------------------------------------------------------------------------------------------
def test_missing_data_root_is_one_clear_error(tmp_path):
    """From the command line, as a user runs it: one line on stderr, exit 2, nothing written."""
    work_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "segmentation/train.py", str(RECIPE), "--data-root", str(tmp_path / "nope"),
                           "--work-dir", str(work_dir)], cwd=REPO, capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err, proc.stderr
    assert err.startswith(f"error: train_dataloader.dataset.data_root={str(tmp_path / 'nope')!r}: folder not found")
    assert "pass --data-root PATH" in err and not work_dir.exists()


def test_data_root_without_labels_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "leftImg8bit" / "val").mkdir(parents=True)
    (tmp_path / "gtFine" / "val").mkdir(parents=True)  # labels not converted: no *_labelTrainIds.png
    rc = seg_test.main([str(RECIPE), str(tmp_path / "x.pth"), "--data-root", str(tmp_path),
                        "--work-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith(f"error: test_dataloader.dataset.data_root={str(tmp_path)!r}: no *_gtFine_labelTrainIds.png")
    assert not (tmp_path / "run").exists()


def test_amp_on_cpu_is_one_clear_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: --amp is valid")
    rc = seg_train.main([str(RECIPE), "--amp", "bf16", "--work-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --amp bf16: MMEngine's AmpOptimWrapper needs a CUDA device")
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_wrong_model_name_is_one_clear_error(tmp_path, capsys):
    rc = seg_test.main([str(RECIPE), str(tmp_path / "x.pth"), "--work-dir", str(tmp_path / "run"),
                        "--cfg-options", "model.backbone.model_name=genas_c1000"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "model_name='genas_c1000' is not a timm model" in err and "'genas_c100'" in err
    assert not (tmp_path / "run").exists()


def test_cfg_options_typo_is_one_clear_error_and_writes_nothing(tmp_path, cityscapes_tiny):
    """A --cfg-options key the config lacks and its component does not take: one line, exit 2, no work dir (was: a
    traceback from MMEngine's loop / the model's constructor, exit 1, logs written)."""
    work_dir = tmp_path / "run"
    proc = _cli("train.py", str(RECIPE), "--data-root", str(cityscapes_tiny), "--work-dir", str(work_dir),
                "--cfg-options", "train_cfg.max_iter=6", "train_dataloader.dataset.data_prefix.img_path=leftImg8bit/val",
                "train_dataloader.dataset.data_prefix.seg_map_path=gtFine/val")
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err and "Traceback" not in err, proc.stderr[-3000:]
    assert err.startswith("error: --cfg-options train_cfg.max_iter: train_cfg (IterBasedTrainLoop) has no option "
                          "'max_iter'; it takes by_epoch, dynamic_intervals, max_iters, type, val_begin, val_interval")
    assert not work_dir.exists()


@pytest.mark.parametrize("option, message", [
    ("model.backbone.foo=1", "error: model: .*got an unexpected keyword argument 'foo'"),
    ("model.decode_head.dilation=2", "error: model: .*got an unexpected keyword argument 'dilation'"),
    ("optim_wrapper.optimizer.lrr=0.1", r"error: --cfg-options optim_wrapper.optimizer.lrr: optim_wrapper.optimizer "
                                        r"\(SGD\) has no option 'lrr'; it takes .*\blr\b"),
    ("default_hooks.checkpoint.intervall=3", r"error: .*default_hooks.checkpoint \(CheckpointHook\) has no option "
                                             r"'intervall'"),
    ("train_dataloader.batchsize=3", r"error: .*train_dataloader \(DataLoader\) has no option 'batchsize'; "
                                     r"it takes .*batch_size"),
    ("exact_resume=yes", r"error: exact_resume='yes': expected True or False"),
])
def test_unknown_options_are_refused_before_anything_is_built(tmp_path, capsys, cityscapes_tiny, option, message):
    import re

    work_dir = tmp_path / "run"
    rc = seg_train.main([str(RECIPE), "--data-root", str(cityscapes_tiny), "--work-dir", str(work_dir),
                         "--cfg-options", option, "train_dataloader.dataset.data_prefix.img_path=leftImg8bit/val",
                         "train_dataloader.dataset.data_prefix.seg_map_path=gtFine/val"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and re.match(message, err), err
    assert not work_dir.exists()


def test_new_options_the_components_take_are_accepted(tmp_path, cityscapes_tiny):
    """Keys the config file does not set but its classes take (a timm keyword of the backbone, a loop setting)."""
    args = argparse.Namespace(
        config=str(RECIPE), work_dir=str(tmp_path / "run"), data_root=str(cityscapes_tiny), launcher="none",
        device="cpu", channels_last=False,
        cfg_options={"model.backbone.drop_path_rate": 0.1, "train_cfg.val_begin": 2,
                     "train_dataloader.dataset.data_prefix.img_path": "leftImg8bit/val",
                     "train_dataloader.dataset.data_prefix.seg_map_path": "gtFine/val"})
    cfg = seg_runner.prepare_config(args, ["train_dataloader"])
    assert cfg.model.backbone.drop_path_rate == 0.1 and cfg.train_cfg.val_begin == 2
    assert not (tmp_path / "run").exists()


def _two_frame_root(data_root: Path, out: Path) -> Path:
    """cityscapes_tiny's frame and its mirror image (labels mirrored too) in the Cityscapes layout: two different
    images with the same number of labelled pixels."""
    for name, flip in (("frankfurt_000000_000294", False), ("frankfurt_000000_000295", True)):
        for src, dst in ((FRAME, f"leftImg8bit/val/frankfurt/{name}_leftImg8bit.png"),
                         (LABELS, f"gtFine/val/frankfurt/{name}_gtFine_labelTrainIds.png")):
            image = Image.open(data_root / src)
            (out / dst).parent.mkdir(parents=True, exist_ok=True)
            (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image).save(out / dst)
    return out


# per-sample normalisation and no dropout: what N processes with a batch of B/N compute equals one process with B
# (BatchNorm statistics of a batch and per-sample random draws depend on how the batch is split)
DDP_INVARIANT = """
gn = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(backbone=dict(norm_eval=True),
             decode_head=dict(norm_cfg=gn, dropout_ratio=0.0), auxiliary_head=dict(norm_cfg=gn, dropout_ratio=0.0))
"""


def test_ddp_two_gloo_processes_equal_one_process(tmp_path, cityscapes_tiny):
    """``torchrun --nproc_per_node 2 segmentation/train.py ... --launcher pytorch`` without GPUs: MMEngine's DDP over
    gloo, one image per process, 2 iterations; the final weights equal those of one process with both images per
    batch (GroupNorm heads, the backbone's BatchNorms in eval mode, no dropout: see DDP_INVARIANT); rank 0 writes
    the final validation."""
    data_root = _two_frame_root(cityscapes_tiny, tmp_path / "data")
    one = _tiny_config(tmp_path / "one.py", data_root, 2, PLAIN, DDP_INVARIANT)
    two = _tiny_config(tmp_path / "two.py", data_root, 2, PLAIN, DDP_INVARIANT)
    work_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # the 2-process run and the 1-process run side by side (one thread per process)
    with open(tmp_path / "ddp.log", "w") as out:
        ddp = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                "2", "segmentation/train.py", str(two), "--launcher", "pytorch", "--device", "cpu",
                                "--work-dir", str(work_dir), "--cfg-options", "train_dataloader.batch_size=1"],
                               cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    proc = _cli("train.py", str(one), "--work-dir", str(tmp_path / "one"), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ddp.wait(timeout=300) == 0, (tmp_path / "ddp.log").read_text()[-3000:]
    log = next(work_dir.glob("*/*.log")).read_text()
    # MMEngine's environment report: 2 processes ("GPU number" is its name for the world size) over gloo
    assert "Distributed training: True" in log and "GPU number: 2" in log, log[:3000]
    assert "dist_cfg: {'backend': 'gloo'}" in log
    result = read_result(work_dir / seg_runner.RESULT_FILE)
    assert result["meta"]["iterations"] == 2 and set(result["metrics"]) == {"mIoU", "mAcc", "aAcc"}
    assert all(0 <= v <= 100 for v in result["metrics"].values())
    ddp, single = _weights(work_dir / "iter_2.pth"), _weights(tmp_path / "one" / "iter_2.pth")
    assert ddp.keys() == single.keys()
    assert len(_losses(work_dir)) == len(_losses(tmp_path / "one")) == 2
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
