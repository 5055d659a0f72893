"""Write a GeNAS / DARTS backbone in timm's hub format, so it loads anywhere timm runs.

    python -m backbones.export --model genas_c100 --checkpoint runs/genas_c100/model_best.pth --out hub/genas_c100
    python -m backbones.export --model darts_imagenet --genotype out/search/result.json --C 46 \
        --checkpoint runs/mine/model_best.pth --out hub/mine --results runs/

The folder holds what timm's ``save_for_hf`` writes, ``config.json`` (architecture, pretrained cfg and, for the
generic ``darts_imagenet`` / ``darts_cifar``, the genotype, ``C`` and ``layers`` as ``model_args``) and
``model.safetensors``, plus a ``README.md`` model card (cell, params, MACs, the measured results found under
``--results`` for this model). Then, after ``import backbones``::

    timm.create_model("local-dir:hub/genas_c100", pretrained=True)      # or "hf-hub:<user>/<repo>" once uploaded

gives a model whose outputs equal the source model's: the export reloads the folder that way and compares the
outputs before moving it into place, so a folder that does not round-trip is never written. The class count is
the checkpoint's (a CIFAR-100 ``darts_cifar`` checkpoint exports with 100 classes). Uploading
(``huggingface_hub.upload_folder``) is left to the user.
"""
from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import timm
import torch
from timm.models import clean_state_dict, save_for_hf

from backbones.darts_net import DEFAULT_GENOTYPE, GENERIC, VARIANTS
from backbones.names import check_model_name
from genas.core.errors import UsageError, usage_errors
from genas.core.io import atomic_write_text, load_checkpoint, sha256_of
from genas.core.results import find_result_files, read_result
from genas.cost import count_macs, count_params
from genas.plots import architecture_key
from genas.spaces.darts.genotype import format_genotype, genotype_to_json

__all__ = ["ExportError", "export", "main"]

class ExportError(UsageError):
    """An export that cannot work (model, checkpoint, output folder, options); nothing is written."""


def _network_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The network weights of a training checkpoint (unwrapped, ``module.`` stripped), loaded weights_only."""
    try:
        state = load_checkpoint(checkpoint)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise ExportError(f"cannot read checkpoint {checkpoint}: {e}") from None
    if not isinstance(state, dict):
        raise ExportError(f"{checkpoint} holds a {type(state).__name__}, not a state dict")
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    state = clean_state_dict(state)
    weight = state.get("classifier.weight")
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ExportError(f"{checkpoint} has no classifier.weight: not a GeNAS / DARTS network checkpoint "
                          f"(export a model trained by backbones/train_imagenet.py or the reference code)")
    return state


def _build(name: str, checkpoint: Path, model_args: dict[str, Any]) -> torch.nn.Module:
    """The model with every weight of the checkpoint, classifier included (the class count is the checkpoint's:
    the overlay tells timm so, or it would drop a classifier whose size differs from the cfg's)."""
    state = _network_state(checkpoint)
    num_classes = int(state["classifier.weight"].shape[0])
    try:
        model = timm.create_model(name, pretrained=True, num_classes=num_classes, **model_args,
                                  pretrained_cfg_overlay=dict(file=str(checkpoint), source="",
                                                              num_classes=num_classes)).eval()
    except (RuntimeError, KeyError, ValueError) as e:
        raise ExportError(f"cannot load checkpoint {checkpoint} into {name}: {e}") from None
    loaded = model.state_dict()
    differ = [k for k, v in loaded.items() if k not in state or not torch.equal(state[k], v)]
    if differ:
        raise ExportError(f"{checkpoint} did not load into {name} whole ({', '.join(differ[:3])} missing or "
                          f"different); check --genotype / --C / --layers")
    return model


def _results_for(name: str, genotype_key: str | None, sha256: str, dirs: Sequence[Path]) -> list[tuple[Path, dict]]:
    """The suite's result files under ``dirs`` measured on these weights: a result naming its checkpoint's
    sha256 must name this one; one without (e.g. detection, segmentation) counts for a published variant by
    name, and for a generic model (whose name says nothing of its cell) only by its cell."""
    found = []
    for path in find_result_files(dirs):
        result = read_result(path)
        if result["kind"] == "search":
            continue
        meta = result["meta"]
        if meta.get("checkpoint_sha256") is not None:
            same = meta["checkpoint_sha256"] == sha256
        elif genotype_key is not None:
            same = architecture_key(meta.get("genotype")) == genotype_key
        else:
            same = result["model"] == name
        if same:
            found.append((path, result))
    return found


def _model_card(name: str, model: torch.nn.Module, hub_name: str, checkpoint: Path, sha256: str,
                results: Sequence[tuple[Path, dict]]) -> str:
    cfg = model.pretrained_cfg
    params, macs = count_params(model), count_macs(model, tuple(cfg["input_size"]))
    lines = ["---", "tags:", "- image-classification", "- timm", "- genas", "library_name: timm",
             f"license: {cfg.get('license', 'apache-2.0')}", "---", "", f"# {hub_name}", "",
             f"A DARTS-space network (timm architecture `{name}`) exported by `python -m backbones.export` of the "
             f"GeNAS suite. {VARIANTS[name].source + '.' if name in VARIANTS else 'A searched / custom cell.'}", "",
             "## Model details", "",
             f"- cell: `{format_genotype(model.genotype)}`",
             f"- width C = {model.feature_info[0]['num_chs'] if name != 'darts_cifar' else model.feature_info[0]['num_chs'] // 3}, "
             f"{len(model.cells)} cells, {model.num_classes} classes",
             f"- params: {params / 1e6:.3f} M; MACs: {macs / 1e9:.3f} G at {cfg['input_size'][1]}x{cfg['input_size'][2]} "
             f"(conv + linear multiply-adds, fvcore)",
             f"- preprocessing: resize / centre-crop {cfg['crop_pct']}, {cfg['interpolation']}, mean {list(cfg['mean'])}, "
             f"std {list(cfg['std'])}",
             f"- weights: `{checkpoint.name}` (sha256 `{sha256}`)", "",
             "## Usage", "", "```python", "import timm", "import backbones  # registers the GeNAS / DARTS architectures",
             f'model = timm.create_model("local-dir:{hub_name}", pretrained=True).eval()  # or "hf-hub:<user>/<repo>"',
             "```", "", "## Measured results", ""]
    if results:
        lines += ["| result | set | metric | value | file |", "|---|---|---|---|---|"]
        for path, r in results:
            for metric, value in r["metrics"].items():
                if value is not None and "/" not in metric:
                    lines.append(f"| {r['kind']} | {r['meta'].get('set', '—')} | {metric} | {value:.2f} | "
                                 f"`{path.name}` |")
    else:
        lines.append("None found (pass `--results` with the folders of the robustness / detection / segmentation runs).")
    return "\n".join(lines) + "\n"


def export(name: str, checkpoint: str | os.PathLike, out: str | os.PathLike, genotype: Any = None,
           C: int | None = None, layers: int | None = None, results: Sequence[str | os.PathLike] = (),
           overwrite: bool = False) -> Path:
    """Export ``name`` with the weights of ``checkpoint`` into the folder ``out`` (see the module docstring)."""
    check_model_name(name, "--model")
    generic = name in GENERIC
    if name not in VARIANTS and not generic:
        raise ExportError(f"--model {name} is not a GeNAS / DARTS model of this suite; choose one of "
                          f"{', '.join(sorted(VARIANTS) + sorted(GENERIC))}")
    if not generic and (genotype is not None or C is not None or layers is not None):
        raise ExportError(f"--genotype, --C and --layers are for the generic darts_imagenet / darts_cifar; {name} "
                          f"has its own cell and width")
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_file():
        raise ExportError(f"checkpoint not found: {checkpoint}")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise ExportError(f"--out {out} exists and is not an empty folder; pass --overwrite to replace it")
    for d in results:
        if not Path(d).is_dir():
            raise ExportError(f"--results {d}: not a folder")
    model_args: dict[str, Any] = {}
    if generic:
        _, default_C, default_layers = GENERIC[name]
        model_args = {"genotype": genotype if genotype is not None else DEFAULT_GENOTYPE,
                      "C": default_C if C is None else C, "layers": default_layers if layers is None else layers}
    model = _build(name, checkpoint, model_args)
    sha256 = sha256_of(checkpoint)
    found = _results_for(name, architecture_key(model.genotype) if generic else None, sha256,
                         [Path(d) for d in results])
    # the genotype as JSON (what darts_imagenet / darts_cifar parse back); published variants need no args
    saved_args = {**model_args, "genotype": genotype_to_json(model.genotype)} if generic else None

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_for_hf(model, tmp, model_args=saved_args, safe_serialization=True)
        atomic_write_text(tmp / "README.md", _model_card(name, model, out.name, checkpoint, sha256, found))
        reloaded = timm.create_model(f"local-dir:{tmp}", pretrained=True).eval()
        x = torch.rand(2, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            if not torch.equal(model(x), reloaded(x)):
                raise ExportError(f"the exported {name} does not reproduce the source model's outputs; nothing written")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # the modes plain mkdir / open would give (mkdtemp and safetensors: private)
        for path in tmp.iterdir():
            os.chmod(path, 0o666 & ~mask)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


@usage_errors
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backbones.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a registered GeNAS / DARTS model (genas_c100, darts_imagenet, ...)")
    p.add_argument("--checkpoint", required=True, help="the trained weights (loaded weights_only)")
    p.add_argument("--out", required=True, help="the hub folder to write (config.json, model.safetensors, README.md)")
    p.add_argument("--genotype", help="generic models only: the cell (Genotype string, search .json, published name); "
                                      "default: the GeNAS flatness CIFAR-100 cell")
    p.add_argument("--C", type=int, help="generic models only: initial channels (default 48 / 36)")
    p.add_argument("--layers", type=int, help="generic models only: cells (default 14 / 20)")
    p.add_argument("--results", nargs="*", default=[], help="folders searched for this model's measured results "
                                                            "(for the model card)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = p.parse_args(argv)
    out = export(args.model, args.checkpoint, args.out, args.genotype, args.C, args.layers, args.results,
                 args.overwrite)
    print(f"wrote {out} (config.json, model.safetensors, README.md); load with "
          f"timm.create_model('local-dir:{out}', pretrained=True) after import backbones")
    return 0


if __name__ == "__main__":
    sys.exit(main())
