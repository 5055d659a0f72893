"""The named evaluations of a manifest: which existing command line each one runs, its options and resources.

============================  ================================  ========================================================
evaluation                    command line                      default data (under the data root)
============================  ================================  ========================================================
``imagenet``                  ``robustness/eval.py --set ...``  ``imagenet/val``
``imagenet-v2``               same                              ``imagenetv2-matched-frequency-format-val``
``imagenet-a`` / ``-r``       same                              ``imagenet-a`` / ``imagenet-r``
``imagenet-o``                same (``--in-dist``)              ``imagenet-o`` (in-distribution: ``imagenet/val``)
``imagenet-sketch``           same                              ``sketch``
``imagenet-c``                same                              ``imagenet-c``
``imagenet-real``             same                              ``imagenet/val``
``coco-retinanet``            ``detection/train_net.py``        the data root itself (``$DETECTRON2_DATASETS``: ``coco/``)
``cityscapes-deeplabv3``      ``segmentation/train.py``, then   ``cityscapes``
                              ``segmentation/test.py``
============================  ================================  ========================================================

Every option of an evaluation is a key of its manifest entry (:data:`OPTIONS`); ``resources`` (GPUs, CPUs,
memory, time) says what one cell needs and never enters the cell's hash, nor does ``workers``.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from genas.core.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]

ROBUSTNESS, DETECTION, SEGMENTATION = "robustness", "detection", "segmentation"

#: what one cell needs; ``gpus`` is also its number of processes on GPUs (1 on the CPU)
RESOURCE_KEYS = ("gpus", "cpus", "mem_gb", "time_min")

_ROBUSTNESS_OPTIONS: dict[str, Any] = {
    "batch_size": 64, "workers": 4, "amp": None, "channels_last": False, "input_size": None, "crop_pct": None,
    "interpolation": None, "skip_bad": False,
}
#: option name -> default, per command line (``data`` and ``resources`` are common to all)
OPTIONS: dict[str, dict[str, Any]] = {
    ROBUSTNESS: _ROBUSTNESS_OPTIONS,
    DETECTION: {"config": "configs/detection/retinanet_genas_c100_FPN_1x.yaml", "opts": {}},
    SEGMENTATION: {"config": "configs/segmentation/deeplabv3_genas_c100_512x1024_80k_cityscapes.py",
                   "cfg_options": {}, "test": True},
}
#: options that do not change a cell's numbers (left out of its hash)
UNHASHED = ("resources", "workers")
#: options whose value is a path (resolved against the repository root when relative)
PATH_OPTIONS = ("config",)


@dataclass(frozen=True)
class Evaluation:
    name: str
    cli: str
    data: str                                  # default data folder, relative to the data root
    resources: Mapping[str, Any]
    set: str | None = None                     # robustness/eval.py --set
    extra: Mapping[str, Any] | None = None     # set-specific options and their defaults

    def options(self) -> dict[str, Any]:
        """Option name -> default of this evaluation (without ``data`` / ``resources``)."""
        return {**OPTIONS[self.cli], **(self.extra or {})}


_CLS = {"gpus": 1, "cpus": 8, "mem_gb": 32, "time_min": 60}


def _robustness(name: str, data: str, **extra: Any) -> Evaluation:
    resources = dict(_CLS, time_min=360) if name == "imagenet-c" else _CLS
    return Evaluation(name, ROBUSTNESS, data, resources, set=name, extra=extra)


EVALUATIONS: dict[str, Evaluation] = {e.name: e for e in (
    _robustness("imagenet", "imagenet/val"),
    _robustness("imagenet-v2", "imagenetv2-matched-frequency-format-val"),
    _robustness("imagenet-a", "imagenet-a"),
    _robustness("imagenet-o", "imagenet-o", in_dist="imagenet/val"),
    _robustness("imagenet-r", "imagenet-r"),
    _robustness("imagenet-sketch", "sketch"),
    _robustness("imagenet-c", "imagenet-c", corruptions=None, severities=None),
    _robustness("imagenet-real", "imagenet/val"),
    # the paper's protocol: 8 GPUs x 2 images, 90k iterations (about 12 h on V100s)
    Evaluation("coco-retinanet", DETECTION, ".", {"gpus": 8, "cpus": 32, "mem_gb": 256, "time_min": 1440}),
    # 4 GPUs x 2 images, 80k iterations
    Evaluation("cityscapes-deeplabv3", SEGMENTATION, "cityscapes",
               {"gpus": 4, "cpus": 16, "mem_gb": 128, "time_min": 1440}),
)}


# --------------------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One command of a cell. ``spawns``: the command starts its own processes (Detectron2's ``--num-gpus``);
    otherwise a multi-process run goes through torchrun (or the SLURM tasks' torch environment)."""
    argv: list[str]
    spawns: bool = False


def _cli_value(value: Any) -> str:
    """A value as MMEngine's ``--cfg-options`` / yacs' ``KEY VALUE`` read it back."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (list, tuple)):
        inner = ",".join(_cli_value(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, str):
        return value
    return repr(value)


def _yacs_value(value: Any) -> str:
    """A value for Detectron2's trailing ``KEY VALUE`` pairs (parsed with ``ast.literal_eval``, else a string)."""
    return value if isinstance(value, str) else repr(value)


def _substitute(value: Any, fields: Mapping[str, str]) -> Any:
    """``{data}`` / ``{data_root}`` / ``{work}`` in the strings of an option value."""
    if isinstance(value, str):
        for key, text in fields.items():
            value = value.replace("{" + key + "}", text)
        return value
    if isinstance(value, list):
        return [_substitute(v, fields) for v in value]
    if isinstance(value, tuple):
        return tuple(_substitute(v, fields) for v in value)
    if isinstance(value, dict):
        return {k: _substitute(v, fields) for k, v in value.items()}
    return value


def free_port() -> int:
    """A TCP port nobody listens on now (for one local multi-process cell)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_files(model: Mapping[str, Any], models_dir: Path) -> dict[str, Any]:
    """What the command lines need to build ``model`` (a resolved model of :mod:`suite.manifest`), writing the
    files that carry its arguments under ``models_dir``: ``genotype.json`` when it has a genotype (read back by
    ``darts_imagenet`` and friends) and a timm hub folder (``config.json``, no weights) for ``robustness/eval.py``,
    which builds models by name only."""
    args = dict(model["model_args"])
    folder = models_dir / model["name"]
    if isinstance(args.get("genotype"), (dict, list)):
        folder.mkdir(parents=True, exist_ok=True)
        path = atomic_write_text(folder / "genotype.json", json.dumps(args["genotype"]) + "\n")
        args["genotype"] = str(path)
    classifier = model["local_dir"] and not model["weights_from_cli"] and f"local-dir:{model['local_dir']}"
    if not classifier and args:
        import timm  # only for the pretrained cfg of the architecture (mean/std, input size)

        folder.mkdir(parents=True, exist_ok=True)
        cfg = timm.models.get_pretrained_cfg(model["architecture"])
        hub = {"architecture": model["architecture"], "num_classes": 1000,
               "pretrained_cfg": cfg.to_dict() if cfg is not None else {}, "model_args": args}
        atomic_write_text(folder / "config.json", json.dumps(hub, indent=2) + "\n")
        classifier = f"local-dir:{folder}"
    return {"classifier": classifier or model["architecture"], "architecture": model["architecture"],
            "model_args": args, "weights": model["weights"] or ""}


def feature_channels(architecture: str, model_args: Mapping[str, Any], out_indices=(0, 1, 2, 3)) -> list[int]:
    """Channels of the feature levels MMSeg's backbone returns (for the heads' ``in_channels``)."""
    import timm

    import backbones  # noqa: F401  (registers the GeNAS / DARTS models)

    model = timm.create_model(architecture, features_only=True, out_indices=tuple(out_indices), **model_args)
    return list(model.feature_info.channels())


def build_steps(cell: Mapping[str, Any], files: Mapping[str, Any], work: Path, device: str) -> tuple[list[Step], Path]:
    """The commands of ``cell`` (a :func:`suite.cells.Cell.to_dict`) and the result file the last one writes."""
    ev = EVALUATIONS[cell["evaluation"]]
    opts = cell["options"]
    fields = {"data": cell["data"], "data_root": cell["data_root"], "work": str(work)}
    py = [sys.executable]
    if ev.cli == ROBUSTNESS:
        out = work / "result.json"
        argv = py + [str(REPO / "robustness" / "eval.py"), "--set", ev.set, "--data", cell["data"],
                     "--model", files["classifier"], "--device", device, "--out", str(out), "--no-progress",
                     "--batch-size", str(opts["batch_size"]), "--workers", str(opts["workers"])]
        model = cell["model"]
        if model["weights_from_cli"]:
            argv += ["--checkpoint", model["weights"]]
        elif model["pretrained"] or model["local_dir"]:
            argv += ["--pretrained"]
        if opts.get("in_dist"):
            argv += ["--in-dist", opts["in_dist"]]
        for flag in ("corruptions", "severities"):
            if opts.get(flag):
                argv += [f"--{flag}", *map(str, opts[flag])]
        if opts["amp"]:
            argv += ["--amp", opts["amp"]]
        for flag in ("channels_last", "skip_bad"):
            if opts[flag]:
                argv += ["--" + flag.replace("_", "-")]
        if opts["input_size"]:
            argv += ["--input-size", *map(str, opts["input_size"])]
        for flag in ("crop_pct", "interpolation"):
            if opts[flag] is not None:
                argv += ["--" + flag.replace("_", "-"), str(opts[flag])]
        return [Step(argv)], out
    if ev.cli == DETECTION:
        config = Path(opts["config"])
        if files["model_args"]:  # yacs takes new MODEL_KWARGS keys from YAML only: a two-line config on top
            derived = work / "config.yaml"
            work.mkdir(parents=True, exist_ok=True)
            atomic_write_text(derived, json.dumps({"_BASE_": str(config),
                                                   "MODEL": {"GENAS": {"MODEL_KWARGS": files["model_args"]}}}) + "\n")
            config = derived
        argv = py + [str(REPO / "detection" / "train_net.py"), "--config-file", str(config),
                     "MODEL.GENAS.NAME", files["architecture"], "MODEL.GENAS.WEIGHTS", files["weights"],
                     "OUTPUT_DIR", str(work), "MODEL.DEVICE", device]
        for key, value in _substitute(opts["opts"], fields).items():
            argv += [key, _yacs_value(value)]
        return [Step(argv, spawns=True)], work / "results_detection.json"
    # segmentation: train, then test the last checkpoint in a fresh process
    channels = feature_channels(files["architecture"], files["model_args"])
    options = {"model.backbone.model_name": files["architecture"],
               **({"model.backbone.weights": files["weights"]} if files["weights"] else {}),
               "model.decode_head.in_channels": channels[3], "model.auxiliary_head.in_channels": channels[2],
               **{f"model.backbone.{k}": v for k, v in files["model_args"].items()},
               **_substitute(opts["cfg_options"], fields)}
    common = ["--work-dir", str(work), "--data-root", cell["data"], "--device", device,
              "--cfg-options", *(f"{k}={_cli_value(v)}" for k, v in options.items())]
    steps = [Step(py + [str(REPO / "segmentation" / "train.py"), opts["config"], *common])]
    if opts["test"]:
        steps.append(Step(py + [str(REPO / "segmentation" / "test.py"), opts["config"], "{last_checkpoint}",
                                *common]))
    return steps, work / "results_segmentation.json"


def last_checkpoint(work: Path) -> str:
    """The checkpoint MMEngine's ``last_checkpoint`` file in ``work`` names (written by segmentation/train.py)."""
    marker = work / "last_checkpoint"
    if not marker.is_file():
        raise FileNotFoundError(f"{marker} not found: segmentation/train.py saved no checkpoint")
    path = marker.read_text(encoding="utf-8").strip()
    return path if os.path.isabs(path) else str(work / path)
