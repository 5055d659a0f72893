"""One prepared GPU check of the whole suite: every figure issue 19 asks for, from one run, as one table.

The GPU run (one command, unattended, < 8 minutes on an H200; writes the table and the rows atomically)::

    python benchmarks/gpu_check.py --device cuda --md benchmarks/results/gpu_check_h200.md \\
        --json benchmarks/results/gpu_check_h200.json

    python benchmarks/gpu_check.py --device cpu --tiny      # the same code paths on tiny sizes (the test suite)

Parts (``--parts``, default all; each row: its figure, the peak GPU memory of its measurement, a status, a note):

``check``
    no model, scoring or training module places a tensor on a fixed device; the AMP / channels_last keys exist.
``scoring``
    flatness scoring at the paper's sizes, s/candidate (mean of 3 sampled candidates after 1 warm-up, random
    CIFAR-shaped data, an untrained supernet: the time does not depend on the weights), each with the time of the forward
    passes the candidate must run (one BN-recalibration pass + t validation passes of the same path, timed in the
    same run on the same batches) and their quotient, the necessary-work ratio (goal <= 1.15 on a GPU):

    * NB201 C=16 N=5: 850 recalibration images (batch 64) + 3 sigmas x 25,000 validation images (batch 5000),
      sigmas 2e-3, 1e-2, 2e-2, with both average-pooling implementations of :mod:`genas.spaces.pooling`
      (``native`` torch kernel, ``conv`` depthwise convolution), the time for all 15,625 cells on 1 and on 8 GPUs,
      which of the two ``auto`` should be on this device, and bf16 autocast (``score.amp=bf16`` with
      ``score.amp_allow_rank_change=true`` where the scorer has that option; refused otherwise);
    * DARTS C=16, 8 layers: 850 + 3 x 25,000 (batch 1000), sigmas 1e-3, 3e-3, 6e-3, both poolings.
``profile``
    the five most expensive device ops of one NB201 paper-size candidate (torch.profiler; on a CPU run the CPU
    ops), with the faster pooling of the scoring part, and the number of host syncs (``aten::_local_scalar_dense``,
    what ``.item()`` / ``float(tensor)`` run) in that candidate.
``training``
    SPOS supernet training steps/s at batch 64 (``genas.train_supernet.train_step`` with the trainer's own
    optimizer), NB201 and DARTS: fp32 as the trainer runs it, the previous step (torch's default SGD, ``native``
    pooling), ``conv`` pooling, and bf16 + channels_last (``train.amp`` / ``train.channels_last``).
``backbone``
    ``genas_c100`` inference images/s at batch 128, 224 px: eager fp32, channels_last fp32, eager bf16 autocast,
    ``torch.compile`` fp32 (skipped when less than a minute of ``--budget-s`` is left).
``detection``
    one RetinaNet training iteration (Detectron2, the suite's recipe, random init) at 2 images x 1333x800, s/iter
    and peak memory, without and with gradient checkpointing (``MODEL.GENAS.GRAD_CHECKPOINT``; "not available"
    where the detection config has no such key); skipped when Detectron2 is missing.
``segmentation``
    one DeepLabv3 (MMSeg) training iteration; skipped when MMSegmentation is missing.

A variant that fails (an exception) fails its own row only (status ``failed``, the error in the note) and the
run goes on; a refused option (``ValueError`` of the scorer, e.g. bf16 that cannot resolve sigma_1) is a
``refused`` row, not a failure. The exit status is 1 if any row failed. Timings synchronise the device around
each timed region; the peak memory is ``torch.cuda.max_memory_allocated`` since the row's measurement started
(``-`` on a CPU). ``--tiny`` shrinks every workload (NB201 C=4 N=1, DARTS C=4 3 layers, a few images) so a
CPU runs all parts in well under a minute.
"""
from __future__ import annotations

import argparse
import datetime
import math
import re
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import TensorDataset

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is not a package; bench_segmentation is imported from the repo root
    sys.path.insert(0, str(REPO))

from genas.core.config import DEFAULTS  # noqa: E402
from genas.core.distributed import AMP_DTYPES, resolve_device  # noqa: E402
from genas.core.io import atomic_write_json, atomic_write_text  # noqa: E402

NB201_ARCHS = 15625
#: Seconds of the time budget a torch.compile variant needs (compilation included) to be started.
COMPILE_RESERVE_S = 60
#: Modules that build or run models: none of them may place a tensor on a fixed device.
MODEL_CODE = ("genas/spaces", "genas/scoring", "genas/train_supernet.py", "genas/cost.py", "backbones",
              "detection/backbone.py", "segmentation/backbone.py")
FIXED_DEVICE = re.compile(r"\.cuda\(|device\s*=\s*['\"]cuda|torch\.device\(\s*['\"]cuda|\.to\(\s*['\"]cuda")
#: Config keys that select the GPU paths of supernet training and scoring.
GPU_KEYS = ("train.amp", "train.channels_last", "score.amp", "score.channels_last")
#: H200 figures of ../shared/reference/gpu_h200_measured.md (main at 9eedeb2) and the goals of issue 19.
GOALS = {"nb201_s_per_candidate": 0.12, "darts_s_per_candidate": 0.6, "necessary_work_ratio": 1.15,
         "nb201_steps_per_s": 65, "darts_steps_per_s": 34, "backbone_images_per_s": 11700,
         "retinanet_peak_mib": 16 * 1024}
POOLINGS = ("native", "conv")
STATUSES = ("ok", "failed", "refused", "skipped", "not available")


@dataclass
class Row:
    part: str
    variant: str
    value: float | None = None
    unit: str = ""
    peak_mib: float | None = None
    note: str = ""
    status: str = "ok"


class Sizes:
    """The workload of each part: GPU sizes, or ``--tiny`` ones that exercise the same code on a CPU."""

    def __init__(self, tiny: bool):
        self.tiny = tiny
        self.nb201 = {"C": 4, "N": 1} if tiny else {"C": 16, "N": 5}
        self.darts = {"C": 4, "layers": 3} if tiny else {"C": 16, "layers": 8}
        # paper settings: 850 recalibration images in batches of 64, 25,000 validation images per sigma
        self.recal_images, self.recal_batch = (40, 16) if tiny else (850, 64)
        self.val_images = 64 if tiny else 25000
        self.eval_batch = {"nb201": 32, "darts": 32} if tiny else {"nb201": 5000, "darts": 1000}
        self.score_candidates = 1 if tiny else 3                # timed candidates per variant (random paths)
        self.score_warmup = 0 if tiny else 1                    # untimed candidates first
        self.train_steps = 1 if tiny else 30
        self.train_warmup = 1 if tiny else 2
        self.train_batch = 8 if tiny else 64
        self.backbone = {"size": 64, "batch": 2, "iters": 1} if tiny else {"size": 224, "batch": 128, "iters": 10}
        self.backbone_kwargs = {"C": 8, "layers": 3} if tiny else {}
        self.detection = ({"size": (96, 128), "batch": 2, "iters": 1} if tiny
                          else {"size": (800, 1333), "batch": 2, "iters": 3})
        self.segmentation = {"size": (64, 128), "batch": 2, "iters": 1} if tiny else {"size": (512, 1024),
                                                                                     "batch": 2, "iters": 5}


# ------------------------------------------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def start_measurement(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None


def timed(device: torch.device, fn: Callable[[], Any], iters: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``iters`` calls after ``warmup`` untimed ones, device synchronised."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def seconds_of(device: torch.device, fn: Callable[[], Any]) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def random_images(n: int, size: int | tuple[int, int], seed: int) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def attempt(part: str, variant: str, fn: Callable[[], Row | list[Row]]) -> list[Row]:
    """``fn()``'s rows, or one ``failed`` row with the error: a failing variant fails its own row only."""
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - one failing variant must not hide the others' figures
        traceback.print_exc()
        return [Row(part, variant, status="failed", note=f"{type(e).__name__}: {e}"[:300])]
    return out if isinstance(out, list) else [out]


# ------------------------------------------------------------------------------------------------------ checks
def fixed_device_findings(root: Path = REPO) -> list[str]:
    """``path:line: text`` of every line of model code that places a tensor on a fixed device."""
    found = []
    for entry in MODEL_CODE:
        path = root / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if FIXED_DEVICE.search(code):
                    found.append(f"{f.relative_to(root)}:{i}: {line.strip()}")
    return found


def missing_gpu_keys() -> list[str]:
    missing = []
    for key in GPU_KEYS:
        section, name = key.split(".")
        if name not in DEFAULTS[section]:
            missing.append(key)
    return missing


def check_rows(sizes: Sizes, device: torch.device) -> list[Row]:
    findings = fixed_device_findings()
    missing = missing_gpu_keys()
    return [Row("check", "no fixed device in model code", float(len(findings)), "findings", None,
                "ok" if not findings else "; ".join(findings[:3]), "ok" if not findings else "failed"),
            Row("check", "AMP / channels_last config keys", float(len(missing)), "missing", None,
                "ok: " + ", ".join(GPU_KEYS) if not missing else f"missing {missing}",
                "ok" if not missing else "failed")]


# ------------------------------------------------------------------------------------------------------ scoring
#: The paper's sigmas of each space (NB201: Table 5; DARTS: GeNAS CIFAR-100).
SIGMAS = {"nb201": (0.002, 0.01, 0.02), "darts": (0.001, 0.003, 0.006)}


class PaperScoring:
    """One space's scorer at the paper's sizes, shared by the pooling variants (the pooling switch changes no
    result, so the batches and the scorer are built once)."""

    def __init__(self, space_name: str, sizes: Sizes, device: torch.device, **score_options: Any):
        from genas.scoring.scorer import ArchScorer
        from genas.spaces import build_supernet, get_space

        self.space_name, self.sizes, self.device = space_name, sizes, device
        kwargs = sizes.nb201 if space_name == "nb201" else sizes.darts
        self.shape = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        self.sigmas = SIGMAS[space_name]
        torch.manual_seed(0)
        self.supernet = build_supernet(space_name, 10, **kwargs)
        n_recal, n_val = sizes.recal_images, sizes.val_images
        labels = torch.Generator().manual_seed(2)
        train = TensorDataset(random_images(n_recal, 32, 1), torch.randint(0, 10, (n_recal,), generator=labels))
        val = TensorDataset(random_images(n_val, 32, 3), torch.randint(0, 10, (n_val,), generator=labels))
        self.cfg = {**DEFAULTS["score"], "metric": "flatness", "sigmas": list(self.sigmas),
                    "recalib_batches": math.ceil(n_recal / sizes.recal_batch), "batch_size_recalib": sizes.recal_batch,
                    "eval_batches": None, "eval_batch_size": sizes.eval_batch[space_name], **score_options}
        self.scorer = ArchScorer(self.supernet, self.cfg, train, val, device)
        rng = np.random.default_rng(0)
        space = get_space(space_name)
        archs = [space.sample(rng) for _ in range(sizes.score_warmup + sizes.score_candidates)]
        self.warmup, self.archs = archs[:sizes.score_warmup], archs[sizes.score_warmup:]
        self.part = f"scoring {space_name} ({self.shape})"
        self.workload = (f"{n_recal} recal (batch {sizes.recal_batch}) + {len(self.sigmas)} x {n_val:,} val "
                         f"(batch {sizes.eval_batch[space_name]}), sigmas {', '.join(f'{s:g}' for s in self.sigmas)}")

    def candidate_seconds(self) -> float:
        """Mean s/candidate over the timed candidates after the warm-up ones."""
        for arch in self.warmup:  # cuDNN autotune, allocator
            self.scorer(arch)
        return statistics.mean(seconds_of(self.device, lambda a=arch: self.scorer(a)) for arch in self.archs)

    def forward_seconds(self) -> float:
        """Mean over the same candidates of the forward passes each must run: one recalibration pass (train
        mode, the recalibration batches) + t validation passes (eval mode), same path, same batches."""
        from genas.scoring.perturbation import mean_loss, recalibrated_bn

        supernet, scorer, device = self.supernet, self.scorer, self.device
        t = len(self.sigmas)
        total = []
        for arch in self.archs:
            def forward(x: torch.Tensor, arch: Any = arch) -> torch.Tensor:
                return supernet(x, arch)

            with recalibrated_bn(supernet, forward, scorer.recalib_batches), torch.no_grad():  # restores BN
                mean_loss(forward, scorer.val_batches)  # warm (allocator, kernels of this path)
                val = seconds_of(device, lambda: mean_loss(forward, scorer.val_batches))
                supernet.train()
                recal = seconds_of(device, lambda: [forward(x) for x, _ in scorer.recalib_batches])
                supernet.eval()
            total.append(recal + t * val)
        return statistics.mean(total)


def scoring_rows(sizes: Sizes, device: torch.device, state: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for space_name in ("nb201", "darts"):
        built: list[PaperScoring] = []
        rows += attempt(f"scoring {space_name}", "build the scorer (paper sizes)",
                        lambda space_name=space_name: built.append(PaperScoring(space_name, sizes, device)) or [])
        if built:
            rows += space_scoring_rows(built[0], sizes, device, state)
            built[0].supernet.to("cpu")
    return rows


def space_scoring_rows(paper: PaperScoring, sizes: Sizes, device: torch.device, state: dict[str, Any]) -> list[Row]:
    """Both poolings (each: s/candidate, the forward passes, their ratio; NB201: the 15,625-cell time), which
    pooling is faster here, and for NB201 bf16."""
    from genas.spaces import pooling

    space_name = paper.space_name
    if space_name == "nb201":
        state["nb201"] = paper
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    for impl in POOLINGS:
        def measure(impl: str = impl) -> list[Row]:
            start_measurement(device)
            with pooling.pool_impl(impl, device.type):
                s = paper.candidate_seconds()
                peak = peak_mib(device)
                fwd = paper.forward_seconds()
            seconds[impl] = s
            goal = GOALS[f"{space_name}_s_per_candidate"]
            out = [Row(paper.part, f"flatness fp32, pooling {impl}", s, "s/candidate", peak,
                       f"{paper.workload}; goal <= {goal} s on a GPU"),
                   Row(paper.part, f"forward passes it must run, pooling {impl}", fwd, "s/candidate", None,
                       f"1 recalibration pass + {len(paper.sigmas)} validation passes of the same path"),
                   Row(paper.part, f"necessary-work ratio, pooling {impl}", s / fwd, "x", None,
                       f"s/candidate / forward passes = {s:.4g} / {fwd:.4g}; goal <= "
                       f"{GOALS['necessary_work_ratio']} on a GPU")]
            if space_name == "nb201":
                out.append(Row(paper.part, f"all {NB201_ARCHS:,} cells, pooling {impl}", NB201_ARCHS * s / 3600,
                               "h", None, f"{NB201_ARCHS:,} x {s:.4g} s on 1 device; "
                                          f"{NB201_ARCHS * s / 8 / 60:.1f} min on 8 (torchrun sharding)"))
            return out

        rows += attempt(paper.part, f"flatness fp32, pooling {impl}", measure)
    if len(seconds) == 2:
        faster = min(seconds, key=seconds.get)
        auto = pooling.get_pool_impl(device.type)
        rows.append(Row(paper.part, "pooling: native / conv time", seconds["native"] / seconds["conv"], "x", None,
                        f"faster here: {faster}; 'auto' on {device.type} is now {auto}"
                        + ("" if faster == auto else f" -> set genas.spaces.pooling.AUTO['{device.type}'] = "
                                                     f"'{faster}'")))
        state[f"{space_name}_pooling"] = faster
    if space_name == "nb201":
        rows += attempt(paper.part, "flatness bf16 autocast", lambda: bf16_row(sizes, device, state))
    return rows


def bf16_row(sizes: Sizes, device: torch.device, state: dict[str, Any]) -> Row:
    from genas.spaces import pooling

    options = {"amp": "bf16"}
    if "amp_allow_rank_change" in DEFAULTS["score"]:
        options["amp_allow_rank_change"] = True
    part = state["nb201"].part if "nb201" in state else "scoring nb201"
    start_measurement(device)
    try:
        paper = PaperScoring("nb201", sizes, device, **options)
    except ValueError as e:  # the scorer refuses bf16 (sigma resolution, or the rank-change guard)
        return Row(part, "flatness bf16 autocast", status="refused", note=f"refused: {e}"[:300])
    with pooling.pool_impl(state.get("nb201_pooling", "auto"), device.type):
        s = paper.candidate_seconds()
    note = f"{', '.join(f'score.{k}={v}' for k, v in options.items())}; pooling {state.get('nb201_pooling', 'auto')}"
    paper.supernet.to("cpu")
    return Row(paper.part, "flatness bf16 autocast", s, "s/candidate", peak_mib(device), note)


# ------------------------------------------------------------------------------------------------------ profile
def profile_rows(sizes: Sizes, device: torch.device, state: dict[str, Any]) -> list[Row]:
    from torch.profiler import ProfilerActivity, profile

    from genas.spaces import pooling

    paper = state.get("nb201") or PaperScoring("nb201", sizes, device)
    paper.supernet.to(device)
    impl = state.get("nb201_pooling", "auto")
    arch = paper.archs[0]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with pooling.pool_impl(impl, device.type):
        paper.scorer(arch)  # warm
        sync(device)
        with profile(activities=activities) as prof:
            paper.scorer(arch)
            sync(device)
    events = prof.key_averages()
    on_device = device.type == "cuda"

    def self_us(e: Any) -> float:
        if on_device:
            return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0))
        return float(e.self_cpu_time_total)

    ops = [e for e in events if e.key.startswith("aten::") and self_us(e) > 0]
    total = sum(self_us(e) for e in ops) or 1.0
    kind = "GPU" if on_device else "CPU"
    rows = [Row("profile nb201 candidate", f"{kind} time of aten ops", total / 1e3, "ms", None,
                f"one candidate of the scoring part's sizes, pooling {impl}")]
    for rank, e in enumerate(sorted(ops, key=self_us, reverse=True)[:5], 1):
        rows.append(Row("profile nb201 candidate", f"top {rank}: {e.key}", self_us(e) / 1e3, "ms", None,
                        f"{100 * self_us(e) / total:.0f}% of the {kind} time, {e.count} calls, "
                        f"{self_us(e) / max(e.count, 1):.0f} us/call"))
    syncs = sum(e.count for e in events if e.key == "aten::_local_scalar_dense")
    rows.append(Row("profile nb201 candidate", "host syncs (aten::_local_scalar_dense)", float(syncs), "calls", None,
                    ".item() / float(tensor) in one candidate (H200, 9eedeb2: 297)"))
    return rows


# ------------------------------------------------------------------------------------------------------ training
def training_rows(sizes: Sizes, device: torch.device) -> list[Row]:
    from genas.spaces import build_supernet, get_space, pooling
    from genas.train_supernet import SGD_IMPL, build_optimizer, train_step

    rows: list[Row] = []
    images = random_images(sizes.train_batch, 32, 3).to(device)
    labels = torch.randint(0, 10, (sizes.train_batch,), generator=torch.Generator().manual_seed(4)).to(device)
    tcfg = DEFAULTS["train"]
    trainer_sgd = SGD_IMPL.get(device.type, "torch default")
    # (variant, amp, channels_last, SGD implementation (None: torch's default), pooling)
    variants = (("fp32 (the trainer's step)", None, False, SGD_IMPL.get(device.type), "auto"),
                ("fp32, previous step (torch-default SGD, native pooling)", None, False, "torch-default", "native"),
                ("fp32, conv pooling", None, False, SGD_IMPL.get(device.type), "conv"),
                ("bf16 + channels_last", "bf16", True, SGD_IMPL.get(device.type), "auto"))
    for space_name, kwargs in (("nb201", sizes.nb201), ("darts", sizes.darts)):
        shape = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        part = f"supernet training {space_name} ({shape})"
        for variant, amp, channels_last, sgd, pool in variants:
            def measure(amp: str | None = amp, channels_last: bool = channels_last, sgd: str | None = sgd,
                        pool: str = pool, variant: str = variant) -> Row:
                start_measurement(device)
                torch.manual_seed(0)
                memory_format = torch.channels_last if channels_last else torch.contiguous_format
                model = build_supernet(space_name, 10, **kwargs).to(device).to(memory_format=memory_format).train()
                if sgd == "torch-default":
                    optimizer = torch.optim.SGD(model.parameters(), lr=tcfg["lr"], momentum=tcfg["momentum"],
                                                weight_decay=tcfg["weight_decay"])
                else:
                    optimizer = build_optimizer(model, tcfg, device, impl=sgd)
                amp_dtype = AMP_DTYPES[amp]
                scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
                space, rng = get_space(space_name), np.random.default_rng(0)
                x = images.contiguous(memory_format=memory_format)

                def step() -> None:
                    train_step(model, optimizer, x, labels, space.sample(rng), grad_clip=tcfg["grad_clip"],
                               scaler=scaler, amp_dtype=amp_dtype)

                with pooling.pool_impl(pool, device.type):
                    s = timed(device, step, sizes.train_steps, warmup=sizes.train_warmup)
                goal = GOALS[f"{space_name}_steps_per_s"]
                return Row(part, variant, 1 / s, "steps/s", peak_mib(device),
                           f"batch {sizes.train_batch}, a new path each step, SGD {sgd or trainer_sgd}, pooling "
                           f"{pooling.get_pool_impl(device.type) if pool == 'auto' else pool}; goal >= {goal} on a GPU")

            rows += attempt(part, variant, measure)
    return rows


# ------------------------------------------------------------------------------------------------------ backbone
def backbone_rows(sizes: Sizes, device: torch.device, compile_backend: str,
                  time_left: Callable[[], float] = lambda: math.inf) -> list[Row]:
    import timm
    import backbones  # noqa: F401  (registers genas_c100)

    rows: list[Row] = []
    b = sizes.backbone
    images = random_images(b["batch"], b["size"], 5).to(device)
    base: list[float] = []
    part = "backbone genas_c100"
    for variant, mode, amp in (("eager fp32", "eager", None), ("channels_last fp32", "channels_last", None),
                               ("eager bf16", "eager", "bf16"), ("torch.compile fp32", "torch.compile", None)):
        if mode == "torch.compile" and time_left() < COMPILE_RESERVE_S:
            rows.append(Row(part, variant, status="skipped",
                            note=f"skipped: under {COMPILE_RESERVE_S} s of the --budget-s left for compilation"))
            continue

        def measure(variant: str = variant, mode: str = mode, amp: str | None = amp) -> Row:
            start_measurement(device)
            torch.manual_seed(0)
            model = timm.create_model("genas_c100", num_classes=1000, **sizes.backbone_kwargs).to(device).eval()
            memory_format = torch.channels_last if mode == "channels_last" else torch.contiguous_format
            model = model.to(memory_format=memory_format)
            x = images.contiguous(memory_format=memory_format)
            net = torch.compile(model, backend=compile_backend) if mode == "torch.compile" else model
            dtype = AMP_DTYPES[amp]

            def forward() -> None:
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    net(x)

            compile_s = seconds_of(device, forward) if mode == "torch.compile" else None
            s = timed(device, forward, b["iters"], warmup=1)
            ips = b["batch"] / s
            if not base:
                base.append(ips)
            note = f"batch {b['batch']} x {b['size']} px, eval forward; {ips / base[0]:.2f}x eager fp32"
            if mode == "eager" and amp is None:
                note += f"; goal >= {GOALS['backbone_images_per_s']:,} images/s (fastest setting) on a GPU"
            if compile_s is not None:
                note += f"; compile {compile_s:.1f} s ({compile_backend})"
            return Row(part, variant, ips, "images/s", peak_mib(device), note)

        rows += attempt(part, variant, measure)
        if mode == "torch.compile":
            torch._dynamo.reset()
    return rows


# ------------------------------------------------------------------------------------------------------ detection
def detection_rows(sizes: Sizes, device: torch.device) -> list[Row]:
    part = "detection RetinaNet"
    d = sizes.detection
    h, w = d["size"]
    shape = f"{d['batch']} x {w}x{h}"
    try:
        from detectron2.modeling import build_model
        from detectron2.structures import Boxes, Instances
        from detectron2.utils.events import EventStorage
        from detection.config import build_config
    except ImportError as e:
        return [Row(part, f"1 training iteration, {shape}", status="skipped", note=f"skipped: {e}")]

    def config(checkpointing: bool):
        opts = ["MODEL.DEVICE", str(device), "MODEL.GENAS.WEIGHTS", "", "INPUT.MIN_SIZE_TRAIN", f"({h},)",
                "INPUT.MAX_SIZE_TRAIN", str(max(h, w)), "SEED", "0"]
        if checkpointing:
            opts += ["MODEL.GENAS.GRAD_CHECKPOINT", "True"]
        cfg = build_config(str(REPO / "configs/detection/retinanet_genas_c100_FPN_1x.yaml"), opts)
        if sizes.tiny:
            cfg.MODEL.GENAS.MODEL_KWARGS.C = 8
        return cfg

    def measure(checkpointing: bool) -> Row:
        cfg = config(checkpointing)
        start_measurement(device)
        torch.manual_seed(0)
        model = build_model(cfg).train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
        g = torch.Generator().manual_seed(6)
        inputs = []
        for _ in range(d["batch"]):
            inst = Instances((h, w))
            xy = torch.rand(3, 2, generator=g) * (min(h, w) / 2)
            inst.gt_boxes = Boxes(torch.cat([xy, xy + min(h, w) / 4], dim=1))
            inst.gt_classes = torch.randint(0, cfg.MODEL.RETINANET.NUM_CLASSES, (3,), generator=g)
            inputs.append({"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
                           "instances": inst, "height": h, "width": w})

        def step() -> None:
            losses = model(inputs)
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()

        with EventStorage(0):  # what Detectron2's trainer opens around its steps (the losses log into it)
            s = timed(device, step, d["iters"], warmup=0 if sizes.tiny else 1)
        peak = peak_mib(device)
        note = f"{cfg.MODEL.GENAS.NAME}, batch {shape} px, fp32, norm {cfg.MODEL.GENAS.NORM}, random init"
        if peak is not None:
            note += f"; fits 16 GB: {'yes' if peak <= GOALS['retinanet_peak_mib'] else 'no'}"
        return Row(part, f"1 training iteration{', grad checkpointing' if checkpointing else ''}", s, "s/iter",
                   peak, note)

    def checkpointed() -> Row:
        if "GRAD_CHECKPOINT" not in config(False).MODEL.GENAS:
            return Row(part, "1 training iteration, grad checkpointing", status="not available",
                       note="not available: the detection config has no MODEL.GENAS.GRAD_CHECKPOINT")
        return measure(True)

    return (attempt(part, "1 training iteration", lambda: measure(False))
            + attempt(part, "1 training iteration, grad checkpointing", checkpointed))


def segmentation_rows(sizes: Sizes, device: torch.device) -> list[Row]:
    part, variant = "segmentation DeepLabv3", "1 training iteration"
    try:
        import mmengine  # noqa: F401
        import mmseg  # noqa: F401
        from benchmarks import bench_segmentation
    except ImportError as e:
        return [Row(part, variant, status="skipped", note=f"skipped: {e}")]

    def measure() -> Row:
        s_cfg = sizes.segmentation
        start_measurement(device)
        args = argparse.Namespace(config=str(REPO / bench_segmentation.RECIPE), model=None, size=s_cfg["size"],
                                  batch_size=s_cfg["batch"])
        if sizes.tiny:
            args.model = "genas_c100"
        torch.manual_seed(0)
        cfg, model, optim = bench_segmentation.build(args, device)
        data = bench_segmentation.batch(args, cfg.model.decode_head.num_classes)
        s = timed(device, lambda: model.train_step(data, optim), s_cfg["iters"], warmup=0 if sizes.tiny else 1)
        h, w = s_cfg["size"]
        return Row(part, variant, s, "s/iter", peak_mib(device),
                   f"{cfg.model.backbone.model_name}, batch {s_cfg['batch']} x {h}x{w}, fp32")

    return attempt(part, variant, measure)


# ------------------------------------------------------------------------------------------------------ output
def figure(r: Row) -> str:
    return "-" if r.value is None else f"{r.value:.4g} {r.unit}"


def format_table(rows: list[Row]) -> str:
    """One markdown table of every row."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| part | variant | figure | peak GPU MiB | status | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        mem = "-" if r.peak_mib is None else f"{r.peak_mib:,.0f}"
        lines.append(f"| {cell(r.part)} | {cell(r.variant)} | {figure(r)} | {mem} | {r.status} | {cell(r.note)} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU check that every part runs)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma list of parts to run (default: all)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default: inductor; with --tiny, eager: TorchDynamo traces the "
                        "same graph but builds no C++/Triton kernels)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 with --tiny on a CPU, whose tensors gain nothing from more "
                        "while a busy machine's OpenMP waits cost up to 10x; else torch's default)")
    p.add_argument("--budget-s", type=float, default=420,
                   help="time budget: a torch.compile variant is skipped when less than %d s of it is left "
                        "(default %%(default)s: the whole check under 8 minutes)" % COMPILE_RESERVE_S)
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file (atomically)")
    p.add_argument("--md", type=Path, help="also write the markdown table to this file (atomically)")
    return p.parse_args(argv)


PARTS = ("check", "scoring", "profile", "training", "backbone", "detection", "segmentation")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except RuntimeError as e:
        print(f"error: --device {args.device}: {e}", file=sys.stderr)
        return 2
    threads = args.threads or (1 if args.tiny and device.type == "cpu" else None)
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(args, device, sys.argv[1:] if argv is None else argv)
    finally:
        torch.set_num_threads(saved_threads)


def _run(args: argparse.Namespace, device: torch.device, argv: list[str]) -> int:
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"error: --parts: unknown part(s) {unknown}; known: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    sizes = Sizes(args.tiny)
    backend = args.compile_backend or ("eager" if args.tiny else "inductor")
    title = (f"GeNAS GPU check on {device} ({name}), torch {torch.__version__}"
             f"{', tiny sizes' if args.tiny else ''}, {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(title)

    started = time.perf_counter()

    def time_left() -> float:
        return args.budget_s - (time.perf_counter() - started)

    state: dict[str, Any] = {}  # what one part hands to the next (the NB201 scorer, the faster pooling)
    builders = {"check": lambda: check_rows(sizes, device),
                "scoring": lambda: scoring_rows(sizes, device, state),
                "profile": lambda: profile_rows(sizes, device, state),
                "training": lambda: training_rows(sizes, device),
                "backbone": lambda: backbone_rows(sizes, device, backend, time_left),
                "detection": lambda: detection_rows(sizes, device),
                "segmentation": lambda: segmentation_rows(sizes, device)}
    rows: list[Row] = []
    for part in parts:
        t0 = time.perf_counter()
        new = attempt(part, "FAILED (the whole part)", builders[part])
        if part == "scoring" and "nb201" in state:
            state["nb201"].supernet.to("cpu")
        rows.extend(new)
        for r in new:  # as they come, so a run cut short still shows its figures
            print(f"  {r.part} | {r.variant} | {figure(r)} | {r.status} | {r.note}", file=sys.stderr, flush=True)
        print(f"  {part}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    state.clear()
    total = time.perf_counter() - started
    table = format_table(rows)
    failed = [r for r in rows if r.status == "failed"]
    print()
    print(table)
    print(f"\ntotal {total:.1f} s; {len(failed)} failed row(s)")
    command = "python benchmarks/gpu_check.py " + " ".join(argv)
    if args.md:
        atomic_write_text(args.md, f"# {title}\n\n`{command}`\n\n{table}\n\ntotal {total:.1f} s; "
                                   f"{len(failed)} failed row(s)\n")
    if args.json:
        atomic_write_json(args.json, {"device": str(device), "device_name": name, "torch": torch.__version__,
                                      "tiny": args.tiny, "command": command, "total_s": total,
                                      "rows": [asdict(r) for r in rows]})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
