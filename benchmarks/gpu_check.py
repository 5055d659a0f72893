"""One prepared GPU check of the whole suite: every figure that matters on a GPU, from one run, as one table.

    python benchmarks/gpu_check.py                          # on one GPU: < 5 minutes (H200-class)
    python benchmarks/gpu_check.py --device cpu --tiny      # the same code paths on tiny sizes (tests, < 60 s)
    python benchmarks/gpu_check.py --json gpu_check.json    # also write the rows as JSON

Parts (each row: its figure, the peak GPU memory allocated during that part, a note):

1. flatness scoring, s/candidate, on the DARTS supernet (C=16, 8 layers) and the NB201 supernet (C=16, N=5) with
   CIFAR-shaped random data (3x32x32, 10 classes): sequential sigmas (fp32), ``score.batched_sigmas`` (one
   ``torch.func.vmap`` pass over the t perturbed parameter sets) and bf16 autocast (``score.amp=bf16``) where the
   scorer's sigma-resolution check allows it (else the row says why not). The speed-ups are printed as ratios;
   for NB201 also candidates/s and the projected time to score all 15,625 architectures;
2. supernet training (SPOS, ``genas.train_supernet.train_step``, batch 64): steps/s for each space, fp32 and
   bf16 + channels_last (``train.amp`` / ``train.channels_last``);
3. backbone inference, images/s of ``genas_c100`` (ImageNet, 224 px): eager vs channels_last vs ``torch.compile``,
   fp32 vs bf16;
4. one RetinaNet (Detectron2) and one DeepLabv3 (MMSeg) training iteration on random inputs, with the suite's
   configs (``detection.config.build_config``, ``benchmarks/bench_segmentation.build``); a part whose package is
   missing is skipped with the reason printed.

Timings synchronise the device around each timed region (``torch.cuda.synchronize``) after untimed warm-up
iterations; the peak memory is ``torch.cuda.max_memory_allocated`` since the part started (``-`` on CPU).
Before the parts it checks the code itself: no model, scoring or training module places a tensor on a fixed
device (``.cuda()``, ``device="cuda"``), and the AMP / channels_last config keys exist for training and scoring.
A part that fails prints its error in its row and the run goes on; the exit status is 1 if any part failed.
"""
from __future__ import annotations

import argparse
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
from genas.core.io import atomic_write_json  # noqa: E402

NB201_ARCHS = 15625
#: Seconds of the time budget a torch.compile variant needs (compilation included) to be started.
COMPILE_RESERVE_S = 60
#: Modules that build or run models: none of them may place a tensor on a fixed device.
MODEL_CODE = ("genas/spaces", "genas/scoring", "genas/train_supernet.py", "genas/cost.py", "backbones",
              "detection/backbone.py", "segmentation/backbone.py")
FIXED_DEVICE = re.compile(r"\.cuda\(|device\s*=\s*['\"]cuda|torch\.device\(\s*['\"]cuda|\.to\(\s*['\"]cuda")
#: Config keys that select the GPU paths of supernet training and scoring.
GPU_KEYS = ("train.amp", "train.channels_last", "score.amp", "score.channels_last", "score.batched_sigmas")


@dataclass
class Row:
    part: str
    variant: str
    value: float | None = None
    unit: str = ""
    peak_mib: float | None = None
    note: str = ""


class Sizes:
    """The workload of each part: GPU sizes, or ``--tiny`` ones that exercise the same code on a CPU."""

    def __init__(self, tiny: bool):
        self.tiny = tiny
        self.nb201 = {"C": 4, "N": 1} if tiny else {"C": 16, "N": 5}
        self.darts = {"C": 4, "layers": 3} if tiny else {"C": 16, "layers": 8}
        self.score_batches = (1, 32) if tiny else (4, 256)      # (batches, batch size) for BN recal and loss
        self.score_candidates = 1 if tiny else 8                # timed candidates per variant
        self.score_warmup = 0 if tiny else 1                    # untimed candidates first
        self.train_steps = 2 if tiny else 30
        self.train_batch = 8 if tiny else 64
        self.backbone = {"size": 64, "batch": 2, "iters": 2} if tiny else {"size": 224, "batch": 128, "iters": 10}
        self.backbone_kwargs = {"C": 8, "layers": 3} if tiny else {}
        self.detection = {"size": 128, "batch": 2, "iters": 1} if tiny else {"size": 800, "batch": 4, "iters": 5}
        self.segmentation = {"size": (64, 128), "batch": 2, "iters": 1} if tiny else {"size": (512, 1024),
                                                                                     "batch": 2, "iters": 5}


# ------------------------------------------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def start_part(device: torch.device) -> None:
    if device.type == "cuda":
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


def random_images(n: int, size: int | tuple[int, int], seed: int) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


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


# ------------------------------------------------------------------------------------------------------ parts
def scoring_rows(sizes: Sizes, device: torch.device) -> list[Row]:
    from genas.scoring.scorer import ArchScorer
    from genas.spaces import build_supernet, get_space

    rows: list[Row] = []
    batches, batch_size = sizes.score_batches
    n = batches * batch_size
    data = TensorDataset(random_images(n, 32, 1), torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(2)))
    variants = (("sequential fp32", {}), ("batched sigmas fp32", {"batched_sigmas": True}),
                ("sequential bf16", {"amp": "bf16"}), ("batched sigmas bf16", {"batched_sigmas": True, "amp": "bf16"}))
    for space_name, kwargs in (("darts", sizes.darts), ("nb201", sizes.nb201)):
        torch.manual_seed(0)
        supernet = build_supernet(space_name, 10, **kwargs)
        space = get_space(space_name)
        rng = np.random.default_rng(0)
        archs = [space.sample(rng) for _ in range(sizes.score_candidates + sizes.score_warmup)]
        shape = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        base = None
        for variant, options in variants:
            part = f"scoring {space_name} ({shape})"
            start_part(device)
            cfg = {**DEFAULTS["score"], "metric": "flatness", "recalib_batches": batches,
                   "batch_size_recalib": batch_size, "eval_batches": batches, "eval_batch_size": batch_size,
                   **options}
            try:
                scorer = ArchScorer(supernet, cfg, data, data, device)
            except ValueError as e:  # the sigma-resolution check of score.amp
                rows.append(Row(part, variant, note=f"not allowed: {e}"))
                continue
            for arch in archs[: sizes.score_warmup]:  # warm-up (cuDNN autotune, allocator)
                scorer(arch)
            seconds = []
            for arch in archs[sizes.score_warmup:]:
                sync(device)
                start = time.perf_counter()
                scorer(arch)
                sync(device)
                seconds.append(time.perf_counter() - start)
            s = statistics.median(seconds)
            base = s if base is None else base
            note = f"{len(cfg['sigmas'])} sigmas, {n} recal + {n} loss images"
            if base != s:
                note += f"; {base / s:.2f}x sequential fp32"
            rows.append(Row(part, variant, s, "s/candidate", peak_mib(device), note))
            if space_name == "nb201":
                hours = NB201_ARCHS * s / 3600
                rows.append(Row(part, f"{variant}: all {NB201_ARCHS:,}", 1 / s, "candidates/s", None,
                                f"projected {hours:.2f} h for all {NB201_ARCHS:,} on 1 device"))
        supernet.to("cpu")
    return rows


def training_rows(sizes: Sizes, device: torch.device) -> list[Row]:
    from genas.spaces import build_supernet, get_space
    from genas.train_supernet import train_step

    rows: list[Row] = []
    images = random_images(sizes.train_batch, 32, 3).to(device)
    labels = torch.randint(0, 10, (sizes.train_batch,), generator=torch.Generator().manual_seed(4)).to(device)
    for space_name, kwargs in (("nb201", sizes.nb201), ("darts", sizes.darts)):
        for variant, amp, channels_last in (("fp32", None, False), ("bf16 + channels_last", "bf16", True)):
            start_part(device)
            torch.manual_seed(0)
            memory_format = torch.channels_last if channels_last else torch.contiguous_format
            model = build_supernet(space_name, 10, **kwargs).to(device).to(memory_format=memory_format).train()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)
            amp_dtype = AMP_DTYPES[amp]
            scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
            space, rng = get_space(space_name), np.random.default_rng(0)
            x = images.contiguous(memory_format=memory_format)

            def step() -> None:
                train_step(model, optimizer, x, labels, space.sample(rng), grad_clip=5.0, scaler=scaler,
                           amp_dtype=amp_dtype)

            s = timed(device, step, sizes.train_steps, warmup=2)
            shape = ", ".join(f"{k}={v}" for k, v in kwargs.items())
            rows.append(Row(f"supernet training {space_name} ({shape})", variant, 1 / s, "steps/s", peak_mib(device),
                            f"batch {sizes.train_batch}, a new path each step"))
            del model, optimizer
    return rows


def backbone_rows(sizes: Sizes, device: torch.device, compile_backend: str,
                  time_left: Callable[[], float] = lambda: math.inf) -> list[Row]:
    import timm
    import backbones  # noqa: F401  (registers genas_c100)

    rows: list[Row] = []
    b = sizes.backbone
    images = random_images(b["batch"], b["size"], 5).to(device)
    base = None
    for mode in ("eager", "channels_last", "torch.compile"):
        for amp in (None, "bf16"):
            variant = f"{mode} {amp or 'fp32'}"
            if mode == "torch.compile" and time_left() < COMPILE_RESERVE_S:
                rows.append(Row("backbone genas_c100", variant, note=f"skipped: under {COMPILE_RESERVE_S} s of "
                                                                     f"the --budget-s left for compilation"))
                continue
            start_part(device)
            torch.manual_seed(0)
            model = timm.create_model("genas_c100", num_classes=1000, **sizes.backbone_kwargs).to(device).eval()
            memory_format = torch.channels_last if mode != "eager" else torch.contiguous_format
            model = model.to(memory_format=memory_format)
            x = images.contiguous(memory_format=memory_format)
            net = torch.compile(model, backend=compile_backend) if mode == "torch.compile" else model
            dtype = AMP_DTYPES[amp]

            def forward() -> None:
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    net(x)

            compile_s = None
            if mode == "torch.compile":
                sync(device)
                t0 = time.perf_counter()
                forward()  # compilation
                sync(device)
                compile_s = time.perf_counter() - t0
            s = timed(device, forward, b["iters"], warmup=1)
            ips = b["batch"] / s
            base = ips if base is None else base
            note = f"batch {b['batch']} x {b['size']} px, eval forward"
            if ips != base:
                note += f"; {ips / base:.2f}x eager fp32"
            if compile_s is not None:
                note += f"; compile {compile_s:.1f} s ({compile_backend})"
            rows.append(Row("backbone genas_c100", variant, ips, "images/s", peak_mib(device), note))
            del model, net
    return rows


def detection_rows(sizes: Sizes, device: torch.device) -> list[Row]:
    try:
        from detectron2.modeling import build_model
        from detectron2.structures import Boxes, Instances
        from detectron2.utils.events import EventStorage
        from detection.config import build_config
    except ImportError as e:
        return [Row("detection RetinaNet", "1 training iteration", note=f"skipped: {e}")]
    d = sizes.detection
    start_part(device)
    opts = ["MODEL.DEVICE", str(device), "MODEL.GENAS.WEIGHTS", "", "MODEL.GENAS.NORM", "BN",
            "INPUT.MIN_SIZE_TRAIN", f"({d['size']},)", "INPUT.MAX_SIZE_TRAIN", str(d["size"]), "SEED", "0"]
    cfg = build_config(str(REPO / "configs/detection/retinanet_genas_c100_FPN_1x.yaml"), opts)
    if sizes.tiny:
        cfg.MODEL.GENAS.MODEL_KWARGS.C = 8
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(6)
    inputs = []
    for _ in range(d["batch"]):
        h = w = d["size"]
        inst = Instances((h, w))
        xy = torch.rand(3, 2, generator=g) * (h / 2)
        inst.gt_boxes = Boxes(torch.cat([xy, xy + h / 4], dim=1))
        inst.gt_classes = torch.randint(0, cfg.MODEL.RETINANET.NUM_CLASSES, (3,), generator=g)
        inputs.append({"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), "instances": inst,
                       "height": h, "width": w})

    def step() -> None:
        losses = model(inputs)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    with EventStorage(0):  # what Detectron2's trainer opens around its steps (the losses log into it)
        s = timed(device, step, d["iters"], warmup=0 if sizes.tiny else 1)
    return [Row("detection RetinaNet", "1 training iteration", s, "s/iter", peak_mib(device),
                f"{cfg.MODEL.GENAS.NAME}, batch {d['batch']} x {d['size']} px, fp32")]


def segmentation_rows(sizes: Sizes, device: torch.device) -> list[Row]:
    try:
        import mmengine  # noqa: F401
        import mmseg  # noqa: F401
        from benchmarks import bench_segmentation
    except ImportError as e:
        return [Row("segmentation DeepLabv3", "1 training iteration", note=f"skipped: {e}")]
    s_cfg = sizes.segmentation
    start_part(device)
    args = argparse.Namespace(config=str(REPO / bench_segmentation.RECIPE), model=None, size=s_cfg["size"],
                              batch_size=s_cfg["batch"])
    if sizes.tiny:
        args.model = "genas_c100"
    torch.manual_seed(0)
    cfg, model, optim = bench_segmentation.build(args, device)
    data = bench_segmentation.batch(args, cfg.model.decode_head.num_classes)
    s = timed(device, lambda: model.train_step(data, optim), s_cfg["iters"], warmup=0 if sizes.tiny else 1)
    h, w = s_cfg["size"]
    return [Row("segmentation DeepLabv3", "1 training iteration", s, "s/iter", peak_mib(device),
                f"{cfg.model.backbone.model_name}, batch {s_cfg['batch']} x {h}x{w}, fp32")]


# ------------------------------------------------------------------------------------------------------ output
def format_table(rows: list[Row]) -> str:
    def value(r: Row) -> str:
        if r.value is None:
            return "-"
        return f"{r.value:.4g} {r.unit}"

    def mem(r: Row) -> str:
        return "-" if r.peak_mib is None else f"{r.peak_mib:.0f}"

    header = ("part", "variant", "figure", "peak GPU MiB", "note")
    cells = [header] + [(r.part, r.variant, value(r), mem(r), r.note) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(c[j].ljust(widths[j]) for j in range(4)) + "  " + c[4])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU check that every part runs)")
    p.add_argument("--parts", default="scoring,training,backbone,detection,segmentation",
                   help="comma list of parts to run (default: all)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default: inductor; with --tiny, eager: TorchDynamo traces the "
                        "same graph but builds no C++/Triton kernels)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--budget-s", type=float, default=270,
                   help="time budget: a torch.compile variant is skipped when less than %d s of it is left "
                        "(default %%(default)s: the whole check under 5 minutes)" % COMPILE_RESERVE_S)
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    return p.parse_args(argv)


PARTS = ("scoring", "training", "backbone", "detection", "segmentation")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except RuntimeError as e:
        print(f"error: --device {args.device}: {e}", file=sys.stderr)
        return 2
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
    print(f"GeNAS GPU check on {device} ({name}), torch {torch.__version__}{', tiny sizes' if args.tiny else ''}")

    rows: list[Row] = []
    findings = fixed_device_findings()
    rows.append(Row("check", "no fixed device in model code", float(len(findings)), "findings", None,
                    "ok" if not findings else "; ".join(findings[:3])))
    missing = missing_gpu_keys()
    rows.append(Row("check", "AMP / channels_last config keys", float(len(missing)), "missing", None,
                    "ok: " + ", ".join(GPU_KEYS) if not missing else f"missing {missing}"))
    failed = bool(findings or missing)
    started = time.perf_counter()

    def time_left() -> float:
        return args.budget_s - (time.perf_counter() - started)

    builders = {"scoring": lambda: scoring_rows(sizes, device), "training": lambda: training_rows(sizes, device),
                "backbone": lambda: backbone_rows(sizes, device, backend, time_left),
                "detection": lambda: detection_rows(sizes, device),
                "segmentation": lambda: segmentation_rows(sizes, device)}
    for part in parts:
        t0 = time.perf_counter()
        try:
            new = builders[part]()
        except Exception as e:  # noqa: BLE001 - one failing part must not hide the others' figures
            traceback.print_exc()
            new = [Row(part, "FAILED", note=f"{type(e).__name__}: {e}"[:300])]
            failed = True
        rows.extend(new)
        for r in new:  # as they come, so a run cut short still shows its figures
            print(f"  {r.part} | {r.variant} | {'-' if r.value is None else f'{r.value:.4g} {r.unit}'} | {r.note}",
                  file=sys.stderr, flush=True)
        print(f"  {part}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    print()
    print(format_table(rows))
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    if args.json:
        atomic_write_json(args.json, {"device": str(device), "device_name": name, "torch": torch.__version__,
                                      "tiny": args.tiny, "rows": [asdict(r) for r in rows]})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
