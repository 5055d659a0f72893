"""Parameters and multiply-adds of the registered DARTS-space models against the paper's numbers.

Usage (from the repository root)::

    python -m backbones.summary                         # every model of backbones.darts_net.VARIANTS
    python -m backbones.summary genas_c100 darts_v2 --input-size 224 --json sizes.json

Parameters exclude the auxiliary head (it is dropped after training). MACs are fvcore's counts of the
convolution and linear layers (one multiply-add = one count): BN folds into the convolutions at inference and
pooling / additions are not multiply-adds, which is how the DARTS line of papers counts "FLOPs".

Measured at 224x224 (the paper columns are GeNAS Table 3; tests/test_backbones.py asserts the counts)::

    model                C params(M)  paper  MACs(G)  paper
    genas_c100          46     5.195    5.2    0.579   0.58
    genas_c10           52     5.564    5.6    0.610   0.61
    genas_af_c100       48     5.414    5.4    0.602   0.60
    genas_af_c10        44     5.344    5.3    0.593   0.59
    rlnas_angle_c100    46     5.425    5.4    0.607   0.61
    darts_v2            48     4.719    4.7    0.530   0.57
    pc_darts            48     5.271    5.3    0.571   0.59
    pc_darts_imagenet   48     5.342    5.3    0.582   0.60
    p_darts             48     4.944    4.9    0.543   0.56
    dropnas             46     5.135    5.1    0.570   0.57
    rlnas               46     5.258    5.3    0.580   0.59
    sdarts_rs           50     5.512    5.5    0.613   0.61
    sdarts_adv          52     5.507    5.5    0.620   0.62

The GeNAS counts reproduce the GeNAS authors' numbers; the baselines' MACs quoted from their own papers were
counted with other tools (e.g. DARTS' 574M includes more than conv/linear) while their parameters agree.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import timm
from tqdm import tqdm

from backbones.darts_net import VARIANTS
from genas.cost import count_macs, count_params
from genas.core.io import atomic_write_json

__all__ = ["ModelSize", "measure", "format_table", "main"]

@dataclass
class ModelSize:
    model: str
    C: int
    params_m: float
    macs_g: float
    paper_params_m: Optional[float]
    paper_macs_g: Optional[float]


def measure(name: str, input_size: int = 224) -> ModelSize:
    """Size of registered model ``name`` (1000 classes, no auxiliary head)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; registered DARTS-space models: {sorted(VARIANTS)}")
    model = timm.create_model(name)
    v = VARIANTS[name]
    return ModelSize(name, v.C, count_params(model) / 1e6, count_macs(model, (3, input_size, input_size)) / 1e9,
                     v.paper_params_m, v.paper_macs_g)


def _fmt(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(rows: Sequence[ModelSize], input_size: int = 224) -> str:
    """Aligned text table; the paper's MACs are at 224x224."""
    macs = f"MACs@{input_size}(G)"
    header = f"{'model':<18} {'C':>3} {'params(M)':>9} {'paper':>6} {macs:>{len(macs)}} {'paper@224':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.model:<18} {r.C:>3} {r.params_m:>9.3f} {_fmt(r.paper_params_m, 1):>6} "
                     f"{r.macs_g:>{len(macs)}.3f} {_fmt(r.paper_macs_g, 2):>9}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Params / MACs of the DARTS-space timm models vs the paper.")
    parser.add_argument("names", nargs="*", help=f"models (default: all of {', '.join(VARIANTS)})")
    parser.add_argument("--input-size", type=int, default=224, help="square input side in pixels (default 224)")
    parser.add_argument("--json", help="also write the table to this JSON file")
    args = parser.parse_args(argv)
    names = args.names or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(VARIANTS)}")
    if args.input_size < 32:
        parser.error(f"--input-size must be at least 32 (five stride-2 stages), got {args.input_size}")
    rows = [measure(n, args.input_size) for n in tqdm(names, desc="measuring", file=sys.stderr)]
    print(format_table(rows, args.input_size))
    if args.json:
        atomic_write_json(args.json, {"input_size": args.input_size, "models": [asdict(r) for r in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
