"""DARTS-space networks (:mod:`genas.spaces.darts.network`) registered as timm models.

Every searched or published DARTS cell becomes a timm model: ``import backbones`` registers the variants
below, then ``timm.create_model('genas_c100', ...)`` works like any timm model (classification, ``features_only``,
``reset_classifier``, local weights through ``pretrained_cfg_overlay=dict(file=...)``). A variant is data (a
cell and a width); the network code lives in the NAS core.

Every registered model passes timm's own model tests (``tests/test_models.py`` of timm; our
``tests/test_timm_contract.py`` keeps the same checks). The generic ``darts_imagenet`` / ``darts_cifar`` build
any cell given as ``genotype=``; created without one (as timm's tests and tools do) they use
:data:`DEFAULT_GENOTYPE`, the paper's main cell (GeNAS flatness, CIFAR-100 search). ``python -m
backbones.export`` writes any of them in timm's hub format (``local-dir:`` / ``hf-hub:``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import nn

from timm.models import build_model_with_cfg, clean_state_dict, generate_default_cfgs, register_model

from genas.spaces.darts.genotype import Genotype
from genas.spaces.darts.network import NetworkCIFAR, NetworkImageNet, _DartsNetwork
from genas.spaces.darts.published import (
    ANGLE_CIFAR100, DARTS_V2, DROPNAS, GENAS_ANGLE_FLATNESS_CIFAR10, GENAS_ANGLE_FLATNESS_CIFAR100,
    GENAS_FLATNESS_CIFAR10, GENAS_FLATNESS_CIFAR100, P_DARTS, PC_DARTS, PC_DARTS_IMAGENET, RLNAS, SDARTS_ADV,
    SDARTS_RS,
)

__all__ = ["NetworkImageNet", "NetworkCIFAR", "Variant", "VARIANTS", "GENERIC", "DEFAULT_GENOTYPE",
           "checkpoint_filter_fn"]


# --------------------------------------------------------------------------------------------------
# timm registration
# --------------------------------------------------------------------------------------------------
def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map a reference / DDP checkpoint onto ``model``'s keys.

    timm's file loader already unwraps ``state_dict`` / ``model`` and DDP ``module.`` prefixes; this filter does
    the same with timm's ``clean_state_dict`` (so it also serves a checkpoint dict passed to it directly) and adds
    the one DARTS rule: drop the auxiliary head when ``model`` has none, and an auxiliary classifier whose class
    count differs from the model's (timm drops the main classifier in that case itself).
    """
    for key in ("state_dict", "model"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    state_dict = clean_state_dict(state_dict)
    aux = getattr(model, "auxiliary_head", None)
    model_state = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        if k.startswith("auxiliary_head."):
            if aux is None:
                continue
            if k.startswith("auxiliary_head.classifier.") and model_state[k].shape != v.shape:
                continue
        out[k] = v
    return out


@dataclass(frozen=True)
class Variant:
    """A registered model: a cell, its width and the size the paper reports for it on ImageNet."""

    genotype: Genotype
    C: int
    paper_params_m: Optional[float]
    paper_macs_g: Optional[float]
    source: str


#: model name -> variant. C is chosen so that the size matches the paper's ImageNet numbers (Table 3).
VARIANTS: Dict[str, Variant] = {
    "genas_c100": Variant(GENAS_FLATNESS_CIFAR100, 46, 5.2, 0.58, "GeNAS flatness, CIFAR-100 search"),
    "genas_c10": Variant(GENAS_FLATNESS_CIFAR10, 52, 5.6, 0.61, "GeNAS flatness, CIFAR-10 search"),
    "genas_af_c100": Variant(GENAS_ANGLE_FLATNESS_CIFAR100, 48, 5.4, 0.60,
                             "GeNAS angle + flatness, CIFAR-100 search"),
    "genas_af_c10": Variant(GENAS_ANGLE_FLATNESS_CIFAR10, 44, 5.3, 0.59, "GeNAS angle + flatness, CIFAR-10 search"),
    "rlnas_angle_c100": Variant(ANGLE_CIFAR100, 46, 5.4, 0.61, "angle (RLNAS metric), CIFAR-100 search, Fig. 6"),
    "darts_v2": Variant(DARTS_V2, 48, 4.7, 0.57, "DARTS (2nd order), CIFAR-10 search"),
    "pc_darts": Variant(PC_DARTS, 48, 5.3, 0.59, "PC-DARTS, CIFAR-10 search"),
    "pc_darts_imagenet": Variant(PC_DARTS_IMAGENET, 48, 5.3, 0.60, "PC-DARTS, ImageNet search (its own paper)"),
    "p_darts": Variant(P_DARTS, 48, 4.9, 0.56, "P-DARTS, CIFAR-10 search"),
    "dropnas": Variant(DROPNAS, 46, 5.1, 0.57, "DropNAS without SE, CIFAR-100 search"),
    "rlnas": Variant(RLNAS, 46, 5.3, 0.59, "RLNAS, CIFAR-10 search"),
    "sdarts_rs": Variant(SDARTS_RS, 50, 5.5, 0.61, "SDARTS-RS, CIFAR-10 search"),
    "sdarts_adv": Variant(SDARTS_ADV, 52, 5.5, 0.62, "SDARTS-ADV, CIFAR-10 search"),
}


def _create(variant: str, model_cls: type, pretrained: bool, **kwargs) -> _DartsNetwork:
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _create_variant(variant: str, pretrained: bool, **kwargs) -> NetworkImageNet:
    v = VARIANTS[variant]
    model_args = {"genotype": v.genotype, "C": v.C, "layers": 14, **kwargs}
    return _create(variant, NetworkImageNet, pretrained, **model_args)


def _cfg(**kwargs) -> Dict[str, Any]:
    """ImageNet evaluation as the reference (resize 256 / crop 224, bilinear); inputs are RGB in [0, 1] with no
    mean/std normalisation because the reference models were trained that way (override for other weights)."""
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bilinear", "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
        "first_conv": "stem0.0", "classifier": "classifier", "license": "apache-2.0", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    **{name: _cfg() for name in VARIANTS},
    "darts_imagenet": _cfg(),
    # CIFAR training of the reference normalises with the CIFAR-10 statistics
    "darts_cifar": _cfg(num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
                        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), first_conv="stem.0"),
})


#: The cell of ``darts_imagenet`` / ``darts_cifar`` created without ``genotype=``: the paper's main result.
DEFAULT_GENOTYPE: Genotype = GENAS_FLATNESS_CIFAR100
#: generic model name -> (network class, default C, default layers): what the reference trains at that size
GENERIC: Dict[str, tuple] = {"darts_imagenet": (NetworkImageNet, 48, 14), "darts_cifar": (NetworkCIFAR, 36, 20)}


def _create_generic(name: str, pretrained: bool, **kwargs) -> _DartsNetwork:
    model_cls, C, layers = GENERIC[name]
    if kwargs.get("genotype") is None:
        kwargs["genotype"] = DEFAULT_GENOTYPE
    return _create(name, model_cls, pretrained, **{"C": C, "layers": layers, **kwargs})


@register_model
def darts_imagenet(pretrained: bool = False, **kwargs) -> NetworkImageNet:
    """Any DARTS-space cell as an ImageNet network: ``genotype=`` (object, string, JSON or .json path; default
    :data:`DEFAULT_GENOTYPE`), ``C=`` (default 48), ``layers=`` (default 14)."""
    return _create_generic("darts_imagenet", pretrained, **kwargs)


@register_model
def darts_cifar(pretrained: bool = False, **kwargs) -> NetworkCIFAR:
    """Any DARTS-space cell as a CIFAR network: ``genotype=`` (default :data:`DEFAULT_GENOTYPE`), ``C=`` (default
    36), ``layers=`` (default 20)."""
    return _create_generic("darts_cifar", pretrained, **kwargs)


@register_model
def genas_c100(pretrained: bool = False, **kwargs) -> NetworkImageNet:
    """GeNAS, flatness search on CIFAR-100, C=46 (paper: 5.2M params, 0.58G MACs, 76.1% top-1)."""
    return _create_variant("genas_c100", pretrained, **kwargs)


@register_model
def genas_c10(pretrained: bool = False, **kwargs) -> NetworkImageNet:
    """GeNAS, flatness search on CIFAR-10, C=52 (paper: 5.6M, 0.61G, 76.0%)."""
    return _create_variant("genas_c10", pretrained, **kwargs)


@register_model
def genas_af_c100(pretrained: bool = False, **kwargs) -> NetworkImageNet:
    """GeNAS, angle + flatness search on CIFAR-100, C=48 (paper: 5.4M, 0.60G, 75.7%)."""
    return _create_variant("genas_af_c100", pretrained, **kwargs)


@register_model
def genas_af_c10(pretrained: bool = False, **kwargs) -> NetworkImageNet:
    """GeNAS, angle + flatness search on CIFAR-10, C=44 (paper: 5.3M, 0.59G, 76.1%)."""
    return _create_variant("genas_af_c10", pretrained, **kwargs)


@register_model
def rlnas_angle_c100(pretrained: bool = False, **kwargs) -> NetworkImageNet:
    """Angle-only search on CIFAR-100 (GeNAS paper Fig. 6), C=46 (paper: 5.4M, 0.61G, 75.0%)."""
    return _create_variant("rlnas_angle_c100", pretrained, **kwargs)


@register_model
def darts_v2(pretrained: bool = False, **kwargs) -> NetworkImageNet:
    """DARTS (second order), C=48 (paper: 4.7M, 0.57G)."""
    return _create_variant("darts_v2", pretrained, **kwargs)


@register_model
def pc_darts(pretrained: bool = False, **kwargs) -> NetworkImageNet:
    """PC-DARTS CIFAR-10 cell, C=48 (paper: 5.3M, 0.59G)."""
    return _create_variant("pc_darts", pretrained, **kwargs)


@register_model
def pc_darts_imagenet(pretrained: bool = False, **kwargs) -> NetworkImageNet:
    """PC-DARTS ImageNet-searched cell, C=48 (PC-DARTS paper: 5.3M, 0.60G)."""
    return _create_variant("pc_darts_imagenet", pretrained, **kwargs)


@register_model
def p_darts(pretrained: bool = False, **kwargs) -> NetworkImageNet:
    """P-DARTS, C=48 (paper: 4.9M, 0.56G)."""
    return _create_variant("p_darts", pretrained, **kwargs)


@register_model
def dropnas(pretrained: bool = False, **kwargs) -> NetworkImageNet:
    """DropNAS CIFAR-100 cell without SE, C=46 (paper: 5.1M, 0.57G)."""
    return _create_variant("dropnas", pretrained, **kwargs)


@register_model
def rlnas(pretrained: bool = False, **kwargs) -> NetworkImageNet:
    """RLNAS CIFAR-10 cell, C=46 (paper: 5.3M, 0.59G)."""
    return _create_variant("rlnas", pretrained, **kwargs)


@register_model
def sdarts_rs(pretrained: bool = False, **kwargs) -> NetworkImageNet:
    """SDARTS-RS, C=50 (paper: 5.5M, 0.61G)."""
    return _create_variant("sdarts_rs", pretrained, **kwargs)


@register_model
def sdarts_adv(pretrained: bool = False, **kwargs) -> NetworkImageNet:
    """SDARTS-ADV, C=52 (paper: 5.5M, 0.62G)."""
    return _create_variant("sdarts_adv", pretrained, **kwargs)
