"""Train a DARTS-space timm model on ImageNet (or any ImageFolder root) from scratch with the reference recipe.

Usage (from the repository root)::

    python backbones/train_imagenet.py --config configs/imagenet/genas_c100.yaml --data /data/imagenet \\
        --output runs/genas_c100
    torchrun --nproc_per_node 8 backbones/train_imagenet.py --config configs/imagenet/genas_c100.yaml \\
        --data /data/imagenet --output runs/genas_c100 --amp bf16          # DDP, any number of GPUs
    python backbones/train_imagenet.py ... --output runs/genas_c100 --resume      # continue after a stop
    python backbones/train_imagenet.py --model darts_imagenet --genotype out/search/result.json --C 46 ...

The recipe (PC-DARTS' ImageNet setup, which GeNAS follows): auxiliary head weight 0.4, label smoothing 0.1,
SGD momentum 0.9, lr 0.5 for a global batch of 1024, weight decay 3e-5, 250 epochs, lr warm-up over 5 epochs
then linear decay to zero, gradient clipping at norm 5, drop-path ramped linearly from 0 over the epochs;
RandomResizedCrop + flip + colour jitter, evaluation at resize 256 / crop 224, inputs in [0, 1] without mean/std
normalisation (the reference's convention, kept in the models' ``pretrained_cfg``).

``--data`` holds ``train/`` and optionally ``val/`` ImageFolder trees (class folders, same names in both).
``--batch-size`` is the global batch, split evenly over the ``torchrun`` processes.

Files in ``--output``: ``last.pth`` (full training state; written every ``checkpoint_every`` steps, at each
epoch end and when ``--max-steps`` stops the run), ``model_best.pth`` / ``model_final.pth`` (weights as
``{'state_dict': ...}``, loadable with ``timm.create_model(name, pretrained=True,
pretrained_cfg_overlay=dict(file=...))``), ``train_log.csv``, ``eval_log.csv``, ``config.yaml`` and, when
training completes, ``result.json`` (:mod:`genas.core.results`, kind ``imagenet``). A resumed run restores model,
optimizer, learning-rate schedule (a torch ``LambdaLR`` stepped once per epoch), AMP scaler and every rank's RNG
state, and re-enters the epoch at the next batch: the sample order depends only on seed and epoch, and each image's
augmentation (crop, flip, colour jitter) is drawn from Python's and torch's generators seeded for that image by
(seed, epoch, image index), in whichever process or loader worker loads it, and restored afterwards. The data
loaders draw their worker seeds from their own generator, so the global torch generator (drop-path) advances only
with the model. A stopped and resumed run therefore trains the same weights as an uninterrupted one (bit for bit on
the CPU with the same number of threads; ``tests/test_train_imagenet.py`` compares them).

GPU options: ``--amp bf16`` / ``--amp fp16`` (autocast; fp16 with a gradient scaler) and ``--channels-last``
(model and inputs in NHWC), or ``amp:`` / ``channels_last:`` in the YAML.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import timm
import torch
from timm.data import create_transform, resolve_data_config
from timm.utils import accuracy
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from backbones.darts_net import VARIANTS
from genas.core.config import ConfigError, dump_config, load_yaml_file, merge_config
from genas.core.distributed import (AMP_DTYPES, DistInfo, all_gather_objects, all_reduce_sum, cleanup_distributed,
                                    get_rng_states, init_distributed, seed_everything, set_rng_states)
from genas.core.errors import UsageError, usage_errors
from genas.core.io import CsvLog, atomic_torch_save, atomic_write_text, load_checkpoint
from genas.core.results import write_result
from genas.spaces.darts.published import parse_genotype

__all__ = ["DEFAULTS", "TrainError", "reference_lr", "reference_scheduler", "build_config", "train", "main"]

GENERIC_MODEL = "darts_imagenet"

#: every setting of a run; the YAML config and the command line override these
DEFAULTS: dict[str, Any] = {
    "model": "genas_c100",
    "genotype": None,          # darts_imagenet only: Genotype string, JSON, .json path or published name
    "C": None,                 # initial channels; null: the variant's own
    "data": None,              # ImageFolder root with train/ (and val/)
    "epochs": 250,
    "batch_size": 1024,        # global, over all processes
    "lr": 0.5,
    "momentum": 0.9,
    "weight_decay": 3.0e-5,
    "warmup_epochs": 5,
    "label_smoothing": 0.1,
    "auxiliary_weight": 0.4,   # 0 disables the auxiliary head
    "grad_clip": 5.0,
    "drop_path": 0.0,          # final drop-path rate of the linear ramp
    "input_size": 224,
    "color_jitter": [0.4, 0.4, 0.4, 0.2],
    "workers": 8,
    "seed": 0,
    "device": "auto",          # auto | cpu | cuda | cuda:N
    "amp": None,               # null | bf16 | fp16
    "channels_last": False,
    "log_every": 50,
    "checkpoint_every": 1000,  # steps
    "max_steps": None,         # stop (resumably) after this many optimizer steps in total
    "progress": True,
}
# settings that may change between a run and its resumption without changing what is trained
RESUMABLE_CHANGES = {"data", "workers", "device", "log_every", "checkpoint_every", "max_steps", "progress"}
TRAIN_FIELDS = ("step", "epoch", "lr", "loss", "loss_aux", "grad_norm", "images_per_s")
EVAL_FIELDS = ("step", "epoch", "top1", "top5", "loss")


class TrainError(UsageError):
    """A run that cannot start or continue; the message says what to change."""


def reference_lr(epoch: int, base_lr: float, epochs: int, warmup_epochs: int) -> float:
    """Learning rate of ``epoch`` (0-based): linear warm-up ``base * (epoch + 1) / warmup`` for the first
    ``warmup_epochs`` epochs, then linear decay from ``base`` towards 0 at ``epochs``."""
    if epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    return base_lr * (epochs - epoch) / (epochs - warmup_epochs)


def reference_scheduler(optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: int) -> LambdaLR:
    """:func:`reference_lr` as a torch ``LambdaLR`` of the optimizer's lr, stepped once per epoch (its
    ``state_dict`` goes into the resume checkpoint)."""
    return LambdaLR(optimizer, lambda epoch: reference_lr(epoch, 1.0, epochs, warmup_epochs))


def _check_config(cfg: Mapping[str, Any]) -> None:
    if cfg["data"] is None:
        raise ConfigError("no data root: pass --data ROOT (an ImageFolder root holding train/ and val/)")
    if cfg["model"] != GENERIC_MODEL and cfg["model"] not in VARIANTS:
        raise ConfigError(f"model {cfg['model']!r} is not a DARTS-space model; choose one of "
                          f"{sorted(VARIANTS)} or {GENERIC_MODEL!r} with --genotype")
    if cfg["model"] == GENERIC_MODEL and cfg["genotype"] is None:
        raise ConfigError(f"model {GENERIC_MODEL!r} needs --genotype (a Genotype string, a .json written by "
                          f"genas/search.py or a published name)")
    if cfg["genotype"] is not None:
        try:
            parse_genotype(cfg["genotype"])
        except ValueError as exc:
            raise ConfigError(f"genotype: {exc}") from None
    if cfg["amp"] not in AMP_DTYPES:
        raise ConfigError(f"amp must be one of {list(AMP_DTYPES)}, got {cfg['amp']!r}")
    if str(cfg["device"]).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {cfg['device']!r}: CUDA is not available; use --device cpu (or auto)")
    for key in ("epochs", "batch_size", "input_size"):
        if cfg[key] <= 0:
            raise ConfigError(f"{key} must be positive, got {cfg[key]}")
    if not 0 <= cfg["warmup_epochs"] < cfg["epochs"]:
        raise ConfigError(f"warmup_epochs must be in [0, epochs), got {cfg['warmup_epochs']} "
                          f"with epochs={cfg['epochs']}")
    if cfg["input_size"] < 64:
        raise ConfigError(f"input_size must be at least 64 (the auxiliary head needs a 2x2 map at stride 32), "
                          f"got {cfg['input_size']}")


def _image_folder(root: Path, split: str, transform: Any) -> Optional[ImageFolder]:
    path = root / split
    if not path.is_dir():
        return None
    try:
        return ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise TrainError(f"{path}: not a usable ImageFolder tree ({exc})") from None


def build_criterion(cfg: Mapping[str, Any]) -> nn.Module:
    """The training loss of the recipe: cross-entropy with ``label_smoothing`` (reference 0.1), torch's own."""
    return nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])


def _build_model(cfg: Mapping[str, Any], num_classes: int) -> nn.Module:
    kwargs: dict[str, Any] = dict(num_classes=num_classes, auxiliary=cfg["auxiliary_weight"] > 0)
    if cfg["genotype"] is not None:
        kwargs["genotype"] = cfg["genotype"]
    if cfg["C"] is not None:
        kwargs["C"] = cfg["C"]
    try:
        return timm.create_model(cfg["model"], **kwargs)
    except ValueError as e:  # the network's own checks (e.g. an odd C) name the setting
        raise TrainError(f"cannot build {cfg['model']}: {e}") from None


def _epoch_indices(num_samples: int, epoch: int, seed: int, info: DistInfo) -> list[int]:
    """This rank's sample order for ``epoch``: a function of (seed, epoch) only, so a resumed run replays it."""
    if info.world_size > 1:
        sampler = DistributedSampler(range(num_samples), num_replicas=info.world_size, rank=info.rank,
                                     shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        return list(sampler)
    generator = torch.Generator().manual_seed(seed * 100003 + epoch)
    return list(RandomSampler(range(num_samples), generator=generator))


def _epoch_keys(num_samples: int, epoch: int, seed: int, info: DistInfo) -> list[tuple[int, int]]:
    """This rank's ``(image index, augmentation seed)`` keys for ``epoch`` in :func:`_epoch_indices` order; the
    seed of an image depends only on (seed, epoch, image index)."""
    seeds = np.random.default_rng([seed, epoch]).integers(0, 2**62, size=num_samples)
    return [(int(i), int(seeds[i])) for i in _epoch_indices(num_samples, epoch, seed, info)]


class SeededAugmentation(Dataset):
    """``dataset[(index, seed)]`` with its random transform drawn from Python's ``random`` (timm's
    RandomResizedCrop) and torch's default generator (flip, colour jitter) seeded by ``seed``; both generators
    are restored afterwards, so augmentation neither depends on nor disturbs the process's own streams."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        python_state, torch_state = random.getstate(), torch.default_generator.get_state()
        random.seed(seed)
        torch.default_generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            random.setstate(python_state)
            torch.default_generator.set_state(torch_state)


def _loader(dataset: Any, indices: Sequence, batch_size: int, cfg: Mapping[str, Any], device: torch.device,
            drop_last: bool) -> DataLoader:
    # generator=: the loader's base seed (drawn at every iteration) must not advance the global generator
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=cfg["workers"],
                      pin_memory=device.type == "cuda", drop_last=drop_last, generator=torch.Generator())


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, cfg: Mapping[str, Any], info: DistInfo, batch_size: int
             ) -> dict[str, float]:
    """Top-1 / top-5 (percent) and mean cross-entropy over the whole set, sharded over the ranks without
    padding (each rank takes every world_size-th image)."""
    model.eval()
    shard = Subset(dataset, range(info.rank, len(dataset), info.world_size))
    loader = _loader(shard, range(len(shard)), batch_size, cfg, info.device, drop_last=False)
    totals = torch.zeros(4, dtype=torch.float64, device=info.device)  # top1 hits, top5 hits, loss sum, count
    amp_dtype = AMP_DTYPES[cfg["amp"]]
    for images, labels in loader:
        images, labels = images.to(info.device, non_blocking=True), labels.to(info.device, non_blocking=True)
        if cfg["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        logits = logits.float()
        top1, top5 = accuracy(logits, labels, topk=(1, min(5, logits.shape[1])))
        n = labels.shape[0]
        totals += torch.tensor([top1.item() * n / 100, top5.item() * n / 100,
                                nn.functional.cross_entropy(logits, labels, reduction="sum").item(), n],
                               dtype=torch.float64, device=info.device)
    all_reduce_sum(totals)
    hits1, hits5, loss_sum, count = totals.tolist()
    return {"top1": 100 * hits1 / count, "top5": 100 * hits5 / count, "loss": loss_sum / count}


def _restore_rng(states: Sequence[Mapping[str, Any]], info: DistInfo) -> None:
    """This rank's saved states (when the run is resumed with another world size: rank ``r % saved``). The
    checkpoint is loaded with ``map_location='cpu'``: ``torch.set_rng_state`` accepts only CPU ByteTensors."""
    state = states[info.rank % len(states)]
    set_rng_states(state, info.device)
    if "python_rng" in state:
        random.setstate(state["python_rng"])


def _check_resume(saved: Mapping[str, Any], cfg: Mapping[str, Any], path: Path) -> None:
    changed = sorted(k for k in cfg if k not in RESUMABLE_CHANGES and saved.get(k) != cfg[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {cfg[k]!r}" for k in changed)
        raise TrainError(f"{path} was trained with other settings ({details}); resume with the same settings "
                         f"or start a new --output")


def train(cfg: Mapping[str, Any], output: str | Path, resume: bool = False) -> Path:
    """Run (or continue) training; returns the path of ``last.pth``."""
    cfg = dict(cfg)
    _check_config(cfg)
    info = init_distributed(cfg["device"])
    try:
        return _train(cfg, Path(output), resume, info)
    finally:
        cleanup_distributed()


def _train(cfg: dict[str, Any], out: Path, resume: bool, info: DistInfo) -> Path:
    last_path = out / "last.pth"
    if last_path.exists() and not resume:
        raise TrainError(f"{out} already holds a run ({last_path}); pass --resume to continue it or choose "
                         f"another --output")
    if resume and not last_path.exists():
        raise TrainError(f"--resume given but {last_path} does not exist")
    if cfg["batch_size"] % info.world_size:
        raise TrainError(f"batch_size {cfg['batch_size']} is not divisible by the {info.world_size} processes")
    batch_per_rank = cfg["batch_size"] // info.world_size
    seed_everything(cfg["seed"], per_rank=True)

    root = Path(cfg["data"])
    probe = _image_folder(root, "train", None)
    if probe is None:
        raise TrainError(f"{root / 'train'} not found: --data must hold train/ (and val/) class folders")
    num_classes = len(probe.classes)
    model = _build_model(cfg, num_classes)
    data_cfg = resolve_data_config(model=model)
    data_cfg["input_size"] = (3, cfg["input_size"], cfg["input_size"])
    train_set = SeededAugmentation(_image_folder(root, "train", create_transform(
        **data_cfg, is_training=True, color_jitter=tuple(cfg["color_jitter"]))))
    val_set = _image_folder(root, "val", create_transform(**data_cfg, is_training=False))
    if val_set is not None and val_set.classes != probe.classes:
        raise TrainError(f"{root / 'val'} has other classes than {root / 'train'}: "
                         f"{sorted(set(val_set.classes) ^ set(probe.classes))[:5]}...")
    steps_per_epoch = len(train_set) // (batch_per_rank * info.world_size)
    if steps_per_epoch == 0:
        raise TrainError(f"{root / 'train'} has {len(train_set)} images, fewer than one global batch of "
                         f"{cfg['batch_size']}; lower --batch-size")

    model.to(info.device)
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"])
    scheduler = reference_scheduler(optimizer, cfg["epochs"], cfg["warmup_epochs"])
    amp_dtype = AMP_DTYPES[cfg["amp"]]
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg["amp"] == "fp16")
    step, epoch, batch_in_epoch, best_top1 = 0, 0, 0, None
    if resume:
        # on CPU: load_state_dict moves model / optimizer tensors to their parameters' device, and the RNG
        # states must stay CPU ByteTensors
        state = load_checkpoint(last_path, map_location="cpu")
        if "scheduler" not in state or not isinstance(state.get("rng"), list):
            raise TrainError(f"{last_path} was written by an older version of this trainer (no scheduler state, "
                             f"one RNG state for all ranks); it cannot be resumed exactly: start a new --output")
        _check_resume(state["config"], cfg, last_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _restore_rng(state["rng"], info)
        step, epoch, batch_in_epoch, best_top1 = (state["step"], state["epoch"], state["batch_in_epoch"],
                                                 state["best_top1"])
    ddp = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None) \
        if info.world_size > 1 else None
    net = ddp or model
    criterion = build_criterion(cfg)

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_config(cfg))
        train_log = CsvLog(out / "train_log.csv", TRAIN_FIELDS, step)
        eval_log = CsvLog(out / "eval_log.csv", EVAL_FIELDS, step)

    def save_state(next_epoch: int, next_batch: int) -> None:
        # every rank's states (CPU tensors); rank 0 writes
        rng = all_gather_objects({**get_rng_states(info.device), "python_rng": random.getstate()})
        if info.is_main:
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
                               "step": step, "epoch": next_epoch, "batch_in_epoch": next_batch,
                               "best_top1": best_top1, "config": cfg}, last_path)

    total_steps = steps_per_epoch * cfg["epochs"]
    bar = tqdm(total=total_steps, initial=step, desc=cfg["model"], disable=not (info.is_main and cfg["progress"]),
               dynamic_ncols=True)
    stopped, metrics = False, None
    while epoch < cfg["epochs"] and not stopped:
        lr = optimizer.param_groups[0]["lr"]  # the scheduler's value for this epoch
        model.drop_path_prob = cfg["drop_path"] * epoch / cfg["epochs"]
        keys = _epoch_keys(len(train_set), epoch, cfg["seed"], info)[batch_in_epoch * batch_per_rank:]
        net.train()
        tic = time.perf_counter()
        for images, labels in _loader(train_set, keys, batch_per_rank, cfg, info.device, drop_last=True):
            images, labels = images.to(info.device, non_blocking=True), labels.to(info.device, non_blocking=True)
            if cfg["channels_last"]:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits, aux_logits = net(images, return_aux=True)
                loss = criterion(logits, labels)
                loss_aux = criterion(aux_logits, labels) if aux_logits is not None else torch.zeros_like(loss)
                total = loss + cfg["auxiliary_weight"] * loss_aux
            if not torch.isfinite(total):
                raise TrainError(f"loss is {total.item()} at step {step} (epoch {epoch}); lower --lr or use "
                                 f"--amp bf16 instead of fp16. {last_path} holds the last good state")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            step += 1
            batch_in_epoch += 1
            bar.update(1)
            if info.is_main and (step % cfg["log_every"] == 0 or batch_in_epoch == steps_per_epoch):
                elapsed = time.perf_counter() - tic
                train_log.write({"step": step, "epoch": epoch, "lr": lr, "loss": loss.item(),
                                 "loss_aux": loss_aux.item(), "grad_norm": float(grad_norm),
                                 "images_per_s": batch_per_rank * info.world_size / max(elapsed, 1e-9)})
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4f}")
            tic = time.perf_counter()
            if cfg["max_steps"] is not None and step >= cfg["max_steps"]:
                stopped = True
                break
            if step % cfg["checkpoint_every"] == 0:
                save_state(epoch, batch_in_epoch)
        if stopped and batch_in_epoch < steps_per_epoch:
            save_state(epoch, batch_in_epoch)
            break
        epoch, batch_in_epoch = epoch + 1, 0
        scheduler.step()
        if val_set is not None:
            metrics = evaluate(net, val_set, cfg, info, batch_per_rank)
            if info.is_main:
                eval_log.write({"step": step, "epoch": epoch - 1, **metrics})
                if best_top1 is None or metrics["top1"] > best_top1:
                    best_top1 = metrics["top1"]
                    atomic_torch_save({"state_dict": model.state_dict()}, out / "model_best.pth")
        save_state(epoch, 0)
    bar.close()

    if epoch >= cfg["epochs"]:
        if metrics is None and val_set is not None:  # resumed after the last epoch had been evaluated
            metrics = evaluate(net, val_set, cfg, info, batch_per_rank)
        if info.is_main:
            atomic_torch_save({"state_dict": model.state_dict()}, out / "model_final.pth")
            final = {"top1": metrics["top1"], "top5": metrics["top5"]} if metrics is not None else {}
            write_result(out / "result.json", "imagenet", cfg["model"], final, set="imagenet", data=str(root),
                         epochs=cfg["epochs"], steps=step, best_top1=best_top1)
    return last_path


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    """DEFAULTS <- YAML file (the project's loader: ``3e-5`` is a float) <- command-line flags; unknown keys and
    wrong types raise ConfigError."""
    loaded = load_yaml_file(args.config) if args.config else {}
    cfg = merge_config(DEFAULTS, loaded, source=args.config or "config")
    flags = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    return merge_config(cfg, flags, source="command line")


@usage_errors
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Train a DARTS-space timm model on an ImageFolder root "
                                                 "(ImageNet recipe of the reference).")
    parser.add_argument("--config", help="YAML of settings, e.g. configs/imagenet/genas_c100.yaml")
    parser.add_argument("--data", help="ImageFolder root with train/ and val/")
    parser.add_argument("--model", help=f"one of {', '.join(VARIANTS)} or {GENERIC_MODEL}")
    parser.add_argument("--genotype", help=f"{GENERIC_MODEL} only: genotype string, .json file or published name")
    parser.add_argument("--C", type=int, help="initial channels (default: the variant's)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", dest="batch_size", type=int, help="global batch over all processes")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", dest="weight_decay", type=float)
    parser.add_argument("--warmup-epochs", dest="warmup_epochs", type=int)
    parser.add_argument("--label-smoothing", dest="label_smoothing", type=float)
    parser.add_argument("--auxiliary-weight", dest="auxiliary_weight", type=float, help="0 disables the head")
    parser.add_argument("--drop-path", dest="drop_path", type=float)
    parser.add_argument("--input-size", dest="input_size", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--amp", choices=["bf16", "fp16"], help="autocast dtype (default: fp32)")
    parser.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                        help="model and inputs in channels_last (NHWC) memory format")
    parser.add_argument("--log-every", dest="log_every", type=int)
    parser.add_argument("--checkpoint-every", dest="checkpoint_every", type=int)
    parser.add_argument("--max-steps", dest="max_steps", type=int, help="stop resumably after this many steps")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    parser.add_argument("--output", required=True, help="run folder (checkpoints, logs, result.json)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from last.pth")
    args = parser.parse_args(argv)
    last = train(build_config(args), args.output, resume=args.resume)  # UsageError: one stderr line, exit 2
    print(f"checkpoint: {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
