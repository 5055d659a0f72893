"""Single-path one-shot (SPOS) supernet training, resumable to the bit.

Usage (from the repository root)::

    python genas/train_supernet.py --config configs/supernet/nb201_digits.yaml   # -> runs/nb201_digits/supernet
    python genas/train_supernet.py --config ... --out runs/x --resume train.epochs=2   # dotted overrides
    torchrun --nproc_per_node 4 genas/train_supernet.py --config ... --out runs/x     # multi-GPU (DDP)

Each step draws one architecture uniformly from the search space and only its path runs forward and
backward (paper Eq. 6); SGD with momentum, cosine learning rate ``lr -> lr_min`` (``train.lr_schedule``: per
step by default, the smooth version of the reference's per-epoch curve, which ``per_epoch`` / ``per_epoch_shifted``
reproduce), weight decay and gradient
clipping. Parameters off the sampled path get no gradient (``grad is None``), so SGD leaves them, their
momentum and their weight decay untouched that step (``train.zero_grad=zeros`` instead keeps zero gradients,
as torch 1.x ``zero_grad()`` did in the reference code: every weight seen so far then decays and keeps its
momentum step). ``train.sampling=per_cell`` (NB201) lets every cell draw its own architecture each step (RLNAS);
``train.nesterov`` and ``train.grad_clip=0`` (no clipping) give the RLNAS NAS-Bench-201 optimizer.

Multi-GPU: every rank draws the architecture from an identically seeded generator, so all ranks train the
SAME path on different data shards and DDP's all-reduce averages gradients of one sub-network (an effective
batch of ``batch_size x world_size`` per architecture). DDP still needs ``find_unused_parameters=True``:
whatever the path, most supernet weights are unused in a step and would otherwise stall its reducer.

Files in ``<out>/supernet/``: ``init.pt`` (epoch-0 weights, for the angle score), ``last.pt`` (full training
state, written every ``train.checkpoint_every_steps`` steps and at each epoch end), ``final.pt``,
``config.yaml``, ``train_log.csv`` (step, epoch, lr, loss, acc, time) and TensorBoard events in ``tb/``.
A resumed run restores model, optimizer, scheduler, AMP scaler, the architecture generator and the RNG states,
and re-enters the epoch at the same sample (the data order depends only on seed and epoch), so killing and
resuming gives the same final weights as an uninterrupted run (bit for bit on the same device and number of
CPU threads: float sums are reduced in a thread-count-dependent order).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from genas.core.errors import UsageError, usage_errors
from genas.core.config import ConfigError, dump_config, load_config
from genas.data import EpochSampler, RandomLabels, build_search_data
from genas.core.distributed import (AMP_DTYPES, DistInfo, all_reduce_sum, barrier, cleanup_distributed, get_rng_states,
                               init_distributed, seed_everything, set_rng_states)
from genas.core.io import CsvLog, atomic_torch_save, atomic_write_text, load_checkpoint
from genas.spaces import Supernet, build_supernet, get_space

__all__ = ["RunExistsError", "SGD_IMPL", "build_optimizer", "train_step", "train_supernet", "load_supernet",
           "check_train_config", "main"]

# Settings that may differ between a run and its resumption (they do not change the trained weights).
RESUMABLE_CHANGES = {"train.device", "train.workers", "train.checkpoint_every_steps", "train.log_every_steps",
                     "train.val_paths"}
LOG_FIELDS = ("step", "epoch", "lr", "loss", "acc", "time")


class RunExistsError(UsageError, FileExistsError):
    """The output folder already holds a run that is not being resumed, or one trained with other settings."""


def epoch_cosine_lr(epoch: int, lr: float, lr_min: float, epochs: int) -> float:
    """The cosine value ``lr_min + (lr - lr_min) (1 + cos(pi epoch / epochs)) / 2`` of one (0-based) epoch."""
    return lr_min + (lr - lr_min) * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0


def lr_scheduler(optimizer: torch.optim.Optimizer, tcfg: Mapping[str, Any],
                 steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of ``train.lr_schedule``, stepped once per training step.

    ``per_step`` (default): cosine from ``lr`` to ``lr_min`` over all steps (smooth within an epoch).
    ``per_epoch`` (AutoDL's ``CosineAnnealingLR.update(epoch, 0)``, RLNAS NB201): constant within epoch ``e``
    at :func:`epoch_cosine_lr` ``(e)``; epoch 0 trains at ``lr``.
    ``per_epoch_shifted`` (GeNAS / RLNAS DARTS: torch's ``CosineAnnealingLR(T_max=epochs)`` stepped before each
    epoch): epoch ``e`` trains at the value of ``e + 1``, so the last epoch runs at ``lr_min``.
    """
    mode, epochs, lr, lr_min = tcfg["lr_schedule"], int(tcfg["epochs"]), float(tcfg["lr"]), float(tcfg["lr_min"])
    if mode == "per_step":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs * steps_per_epoch, 1),
                                                          eta_min=lr_min)
    shift = 1 if mode == "per_epoch_shifted" else 0

    def factor(step: int) -> float:
        epoch = min(step // steps_per_epoch, epochs - 1) + shift
        return epoch_cosine_lr(epoch, lr, lr_min, epochs) / lr if lr > 0 else 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


#: SGD implementation per device type: ``for-loop`` (torch's single-tensor loop) or ``foreach`` (multi-tensor
#: kernels, fewer launches; also zeroes the gradients of ``train.zero_grad=zeros`` in one call). Both are the same
#: update (``tests/test_fast_paths.py`` checks losses and weights of several steps against a plain step written
#: in the test). The value is the one measured faster on that device type: on the 2-core CPU (1 thread, process
#: CPU time, ``benchmarks/bench_fast_paths.py --only sgd``) the optimizer step on one sampled path's gradients is
#: 1.32x (NB201 C=16 N=5) and 1.45x (DARTS C=16, 8 layers) faster with ``foreach`` (the whole batch-64 step:
#: 0.96x and 1.09x, within the noise of a step 1000x longer); on CUDA ``foreach`` is torch's own default for these
#: parameters, kept (``benchmarks/gpu_check.py`` times the trainer's step against torch's default step). Device
#: types not listed: torch's default.
#: torch's ``fused`` SGD is not offered: it needs every momentum buffer to exist from the first step together,
#: and in SPOS a weight first gets a gradient (and its buffer) when a path first uses it ("expected Tensor as
#: element k ... got NoneType" on the second path).
SGD_IMPL: dict[str, str] = {"cpu": "foreach", "cuda": "foreach"}
SGD_IMPLS = ("for-loop", "foreach")


def _sgd_flags(device: torch.device, impl: str | None = None) -> dict[str, bool | None]:
    impl = impl or SGD_IMPL.get(torch.device(device).type)
    if impl is None:
        return {"foreach": None}
    if impl not in SGD_IMPLS:
        raise ValueError(f"SGD implementation must be one of {SGD_IMPLS}, got {impl!r}")
    return {"foreach": impl == "foreach"}


def build_optimizer(model: nn.Module, tcfg: Mapping[str, Any], device: torch.device | str,
                    impl: str | None = None) -> torch.optim.SGD:
    """The trainer's SGD over every supernet weight (momentum, weight decay, Nesterov of ``tcfg``), in the
    implementation :data:`SGD_IMPL` gives the device type (``impl`` overrides it: ``for-loop``, ``foreach``).
    Weights without a gradient (off the sampled path) are skipped by each implementation alike."""
    return torch.optim.SGD(model.parameters(), lr=tcfg["lr"], momentum=tcfg["momentum"],
                           weight_decay=tcfg["weight_decay"], nesterov=bool(tcfg["nesterov"]),
                           **_sgd_flags(torch.device(device), impl))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               *forward_args: Any, grad_clip: float, scaler: torch.amp.GradScaler,
               amp_dtype: torch.dtype | None = None, zero_grad: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of ``model(images, *forward_args)`` (the supernet gets the arch, a standalone net nothing).

    ``zero_grad="none"``: gradients are reset to None, so weights off the sampled path get no update at all;
    ``"zeros"``: reset to zero tensors (torch 1.x ``zero_grad()``, the reference), so every weight that was
    on some earlier path still gets weight decay and a momentum step. ``grad_clip`` 0: no clipping (torch's
    ``clip_grad_norm_`` with its multi-tensor norm; the clip factor stays on the device).
    Returns the detached loss and the number of correct predictions as tensors: nothing in the step waits for
    the device (no ``.item()``, no Python branch on a tensor), so a GPU runs it without a host sync.
    """
    optimizer.zero_grad(set_to_none=zero_grad == "none")
    if amp_dtype is None:
        logits = model(images, *forward_args)
        loss = F.cross_entropy(logits, labels)
    else:
        with torch.autocast(images.device.type, dtype=amp_dtype):
            logits = model(images, *forward_args)
            loss = F.cross_entropy(logits, labels)
    if scaler.is_enabled():  # fp16: scaled backward, unscale before clipping, skip steps with inf gradients
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return loss.detach(), (logits.detach().argmax(dim=1) == labels).sum()


def load_supernet(path: str | Path, device: str | torch.device = "cpu") -> Supernet:
    """Rebuild the supernet saved in a checkpoint of this trainer (``init.pt``, ``last.pt``, ``final.pt``)."""
    ckpt = load_checkpoint(path, map_location="cpu")
    missing = [k for k in ("model", "space", "supernet", "num_classes") if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a supernet checkpoint of genas.train_supernet (missing {missing})")
    model = build_supernet(ckpt["space"], ckpt["num_classes"], **ckpt["supernet"])
    model.load_state_dict(ckpt["model"])
    return model.to(device)


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_resume_config(saved: Mapping[str, Any], cfg: Mapping[str, Any], path: Path) -> None:
    """Resuming with settings that change training would silently mix two runs: refuse it. A key the saved
    config lacks (written before that option existed) counts as its default, which is what that run used."""
    sections = ("space", "supernet", "data", "train")
    defaults = load_config(None, [f"space={saved['space']}"])
    old = {**_flatten({k: defaults[k] for k in sections}), **_flatten({k: saved[k] for k in sections})}
    new = _flatten({k: cfg[k] for k in sections})
    changed = sorted(k for k in old.keys() | new.keys() if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise RunExistsError(f"cannot resume {path}: it was trained with other settings ({diffs}); "
                             f"use the same config or another --out")


def train_supernet(cfg: Mapping[str, Any], out_dir: str | Path, resume: bool = True,
                   show_progress: bool = True) -> Path:
    """Train the supernet of ``cfg`` into ``out_dir/supernet``; return the path of ``final.pt``.

    With ``resume`` an interrupted run continues from ``last.pt`` (a finished one returns at once); without
    it an existing run in ``out_dir`` raises :class:`RunExistsError`.
    """
    caller_group = torch.distributed.is_initialized()  # a caller's process group is the caller's to close
    info = init_distributed(cfg["train"]["device"])
    try:
        return _train(cfg, Path(out_dir) / "supernet", resume, info, show_progress)
    finally:
        if not caller_group:
            cleanup_distributed()


def check_train_config(cfg: Mapping[str, Any]) -> None:
    """The checks on the ``train`` section that need no data (run before any file is written)."""
    tcfg = cfg["train"]
    if tcfg["sampling"] == "per_cell" and cfg["space"] != "nb201":
        raise ConfigError(f"train.sampling=per_cell (every cell draws its own architecture, RLNAS NAS-Bench-201) "
                          f"applies to nb201 only; the {cfg['space']} supernet shares one normal/reduce "
                          f"architecture across its cells: use train.sampling=shared")
    for key in ("epochs", "batch_size", "checkpoint_every_steps", "log_every_steps"):
        if tcfg[key] < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {tcfg[key]}")
    if tcfg["grad_clip"] < 0:
        raise ConfigError(f"train.grad_clip must be >= 0 (0: no clipping), got {tcfg['grad_clip']}")
    if tcfg["nesterov"] and tcfg["momentum"] <= 0:
        raise ConfigError("train.nesterov=true needs train.momentum > 0")


def _train(cfg: Mapping[str, Any], run_dir: Path, resume: bool, info: DistInfo, show_progress: bool) -> Path:
    tcfg = cfg["train"]
    check_train_config(cfg)
    last, final, init = run_dir / "last.pt", run_dir / "final.pt", run_dir / "init.pt"
    existing = [p for p in (last, final, init) if p.is_file()]
    if existing and not resume:
        raise RunExistsError(f"{run_dir} already holds a run ({existing[0].name}); pass --resume to continue it "
                             f"or choose another --out")
    if resume and final.is_file():
        _check_resume_config(load_checkpoint(final)["config"], cfg, final)
        return final

    data = build_search_data(cfg["data"])
    train_set = RandomLabels(data.train, data.num_classes, tcfg["seed"]) if tcfg["random_labels"] else data.train
    device, batch_size = info.device, tcfg["batch_size"]
    sampler = EpochSampler(len(train_set), tcfg["seed"], info.rank, info.world_size)
    steps_per_epoch = sampler.shard_size // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size={batch_size} exceeds the {sampler.shard_size} search-train samples "
                          f"per process; lower it")
    total_steps = tcfg["epochs"] * steps_per_epoch

    seed_everything(tcfg["seed"])  # identical initial weights on every rank
    space = get_space(cfg["space"])
    model = build_supernet(cfg["space"], data.num_classes, **cfg["supernet"]).to(device)
    memory_format = torch.channels_last if tcfg["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(model, tcfg, device)
    scheduler = lr_scheduler(optimizer, tcfg, steps_per_epoch)
    amp_dtype = AMP_DTYPES[tcfg["amp"]]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    arch_rng = np.random.default_rng(tcfg["seed"])  # same stream on every rank: all ranks train one path
    meta = {"space": cfg["space"], "supernet": dict(cfg["supernet"]), "num_classes": data.num_classes,
            "config": dict(cfg)}  # what load_supernet rebuilds the network from

    step, elapsed, lr = 0, 0.0, tcfg["lr"]
    if resume and last.is_file():
        state = load_checkpoint(last, map_location="cpu")
        _check_resume_config(state["config"], cfg, last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the implementation of this device, not the saved one's
            group.update(_sgd_flags(device))
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        arch_rng.bit_generator.state = state["arch_rng"]
        set_rng_states(state, device)
        step, elapsed = state["step"], state["elapsed"]
    elif info.is_main:
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
        atomic_torch_save({**meta, "model": model.state_dict(), "epoch": 0, "step": 0}, init)

    def save_last() -> None:
        if info.is_main:
            atomic_torch_save({**meta, "model": model.state_dict(), "epoch": step // steps_per_epoch,
                               "step": step, "elapsed": elapsed, "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                               "arch_rng": arch_rng.bit_generator.state, **get_rng_states(device)}, last)

    net = model
    if info.world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)
    loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, num_workers=tcfg["workers"],
                        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=tcfg["workers"] > 0)
    csv_log = CsvLog(run_dir / "train_log.csv", LOG_FIELDS, step) if info.is_main else None
    tb = _summary_writer(run_dir / "tb", step) if info.is_main else contextlib.nullcontext()
    pending: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # (loss, correct, n) of each step since the last row
    progress = tqdm(total=total_steps, initial=step, desc="supernet", unit="step", disable=not (info.is_main and show_progress), dynamic_ncols=True)

    def log() -> None:
        # the one host sync of the loop: every train.log_every_steps steps (and at checkpoints)
        if not pending:
            return
        losses, corrects, counts = zip(*pending)
        n = torch.tensor(counts, dtype=torch.float32, device=device)
        sums = torch.stack([(torch.stack(losses).float() * n).sum(), torch.stack(corrects).sum().float(), n.sum()])
        pending.clear()
        loss, correct, count = all_reduce_sum(sums).tolist()
        if info.is_main:
            row = {"step": step, "epoch": (step - 1) // steps_per_epoch + 1, "lr": lr,
                   "loss": loss / count, "acc": correct / count, "time": elapsed}
            csv_log.write(row)
            for key in ("loss", "acc", "lr"):
                tb.add_scalar(f"train/{key}", row[key], step)
            progress.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['acc']:.3f}", lr=f"{row['lr']:.4f}")

    per_cell = tcfg["sampling"] == "per_cell"
    model.train()
    with tb:
        while step < total_steps:
            epoch, done_in_epoch = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch, done_in_epoch * batch_size)
            started = time.perf_counter() - elapsed
            for images, labels in loader:
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                labels = labels.to(device, non_blocking=True)
                arch = (space.sample_cells(arch_rng, model.num_search_cells) if per_cell
                        else space.sample(arch_rng))
                lr = optimizer.param_groups[0]["lr"]
                loss, correct = train_step(net, optimizer, images, labels, arch, grad_clip=tcfg["grad_clip"],
                                           scaler=scaler, amp_dtype=amp_dtype, zero_grad=tcfg["zero_grad"])
                scheduler.step()
                step += 1
                elapsed = time.perf_counter() - started
                pending.append((loss, correct, len(labels)))
                progress.update()
                checkpoint = step % tcfg["checkpoint_every_steps"] == 0 or step % steps_per_epoch == 0
                if checkpoint or step % tcfg["log_every_steps"] == 0:
                    log()  # flushed at every checkpoint, so no partial sums need saving
                if checkpoint:
                    save_last()
    progress.close()
    if info.is_main:
        atomic_torch_save({**meta, "model": model.state_dict(), "epoch": tcfg["epochs"], "step": step,
                           "elapsed": elapsed}, final)
    barrier()
    return final


def sampled_path_accuracy(supernet: Supernet, train_data: Any, val_data: Any, device: str | torch.device = "cpu",
                          num_paths: int = 10, seed: int = 0, recalib_batches: int = 2,
                          batch_size: int = 256) -> dict[str, Any]:
    """How well a supernet is trained: validation top-1 of ``num_paths`` architectures drawn uniformly with
    ``seed``, each after exact BN recalibration on ``recalib_batches`` training batches (as the scorer does),
    on the whole validation split. Returns mean, median, min, max (fractions), num_paths and num_images; the
    supernet's weights and BN statistics are left unchanged (it is left on ``device``, in eval mode)."""
    from genas.scoring.perturbation import fixed_batches, recalibrated_bn, top1_accuracy

    supernet = supernet.to(device).eval()
    recal = fixed_batches(train_data, recalib_batches, batch_size, seed, device)
    val = fixed_batches(val_data, None, batch_size, seed + 1, device)
    rng = np.random.default_rng(seed)
    accuracies = []
    for _ in range(num_paths):
        arch = supernet.space.sample(rng)

        def forward(x: torch.Tensor, arch: Any = arch) -> torch.Tensor:
            return supernet(x, arch)

        with recalibrated_bn(supernet, forward, recal):
            accuracies.append(top1_accuracy(forward, val))
    return {"mean": float(np.mean(accuracies)), "median": float(np.median(accuracies)),
            "min": float(min(accuracies)), "max": float(max(accuracies)), "num_paths": num_paths,
            "num_images": sum(len(y) for _, y in val)}


def _summary_writer(path: Path, step: int):
    from torch.utils.tensorboard import SummaryWriter  # imported lazily: tensorboard is slow to import

    return SummaryWriter(str(path), purge_step=step if step > 0 else None)


@usage_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a one-shot supernet with single-path uniform sampling "
                                                 "(SPOS).")
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/supernet/nb201_digits.yaml")
    parser.add_argument("--out", help="run folder; checkpoints and logs go to <out>/supernet/ "
                                      "(default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--device", help="shortcut for train.device=... (cpu, cuda, cuda:1, auto)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides such as train.epochs=2")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
    cfg = load_config(args.config, overrides)
    final = train_supernet(cfg, args.out or Path("runs") / Path(args.config).stem, resume=args.resume)
    print(f"supernet: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
