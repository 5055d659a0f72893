"""One freezing rule for every task adapter: a timm feature model frozen up to one of its feature levels.

:func:`freeze_to_level` freezes every parameter that feature level ``level`` (an index into the model's
``feature_info``, counted over all its levels whatever ``out_indices`` returns) depends on, and names the
BatchNorm layers that compute it. The dependency is read from the autograd graph of one small forward pass in
eval mode (no running statistic changes), so it holds for any timm model whatever its module layout: for the
DARTS networks, level 0 (stride 4) is ``stem0``; level 1 (stride 8) is the stems and cells 0-3; and so on.

The two frameworks' conventions map onto it:

* Detectron2's ``MODEL.BACKBONE.FREEZE_AT`` with ResNet's meaning (:func:`level_of_freeze_at`): 0 freezes
  nothing, 1 the stem, ``k`` the stem and the first ``k - 1`` stages, i.e. everything computing ``res<k>`` (the
  level at stride ``2**k``). A model whose first level is its stem output at stride 4 (the DARTS networks) has
  no separate stem level, so 1 and 2 both freeze the stem; a value beyond the built levels freezes them all,
  as Detectron2's ResNet does.
* MMSeg's ``frozen_stages`` (:func:`level_of_frozen_stages`): -1 freezes nothing, ``k >= 0`` freezes level
  ``k`` and everything before it, as MMSeg's ResNet does with its stem + stages.

What frozen BatchNorm layers become is the framework's business: Detectron2 converts them to
``FrozenBatchNorm2d`` (``detection/backbone.py``), MMSeg keeps them in eval mode (``segmentation/backbone.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from genas.core.errors import UsageError

__all__ = ["FreezeError", "FrozenPart", "level_strides", "level_module_name", "level_dependencies",
           "freeze_to_level", "level_of_freeze_at", "level_of_frozen_stages"]


class FreezeError(UsageError):
    """A freeze setting this model cannot honour; the message names the setting and the valid values."""


@dataclass(frozen=True)
class FrozenPart:
    """What computes feature ``level`` (-1: nothing): parameter names and BatchNorm module names in the model."""

    level: int
    parameters: tuple[str, ...] = ()
    norms: tuple[str, ...] = ()


def level_strides(model: nn.Module) -> list[int]:
    """Strides of all the feature levels of a timm ``features_only`` model (not only those it returns)."""
    return [info["reduction"] for info in model.feature_info.info]


def level_module_name(model: nn.Module, level: int, setting: str = "level") -> str:
    """Name (in ``model``) of the module whose output is feature ``level``; :class:`FreezeError` naming
    ``setting`` when ``level`` is no level of the model or was pruned away by ``out_indices``."""
    info = model.feature_info.info
    if not 0 <= level < len(info):
        raise FreezeError(f"{setting}: feature level {level} does not exist; the model has levels "
                          f"0..{len(info) - 1}")
    name = info[level]["module"]
    # FeatureGetterNet keeps the model as `model.`; FeatureListNet / FeatureDictNet flatten nested names with `_`
    modules = dict(model.named_modules())
    found = next((c for c in (f"model.{name}", name, name.replace(".", "_")) if c in modules), None)
    if found is None:
        raise FreezeError(f"{setting}: feature level {level} (module {name!r}) is not built (out_indices stops "
                          f"before it); freeze only levels up to the deepest one the model returns")
    return found


def level_dependencies(model: nn.Module, level: int, in_chans: int = 3, setting: str = "level") -> FrozenPart:
    """The parameters and BatchNorm layers that feature ``level`` of ``model`` depends on (nothing is changed)."""
    if level < 0:
        return FrozenPart(-1)
    target = model.get_submodule(level_module_name(model, level, setting))
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module: nn.Module, args, output) -> None:
            captured[name] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    handles = [target.register_forward_hook(keep(""))]
    handles += [m.register_forward_hook(keep(n)) for n, m in norms.items()]
    params = dict(model.named_parameters())
    was_training = model.training
    already_frozen = [p for p in params.values() if not p.requires_grad]
    try:
        for p in already_frozen:  # dependencies are read from autograd: it must see every parameter for now
            p.requires_grad_(True)
        model.eval()
        stride = max(level_strides(model))
        first = next(iter(params.values()), None)
        x = torch.zeros(1, in_chans, 2 * stride, 2 * stride,
                        device=first.device if first is not None else None)
        with torch.enable_grad():
            model(x)
            out = captured.pop("")
            norm_names = [n for n in norms if n in captured and captured[n].requires_grad]
            inputs = list(params.values()) + [captured[n] for n in norm_names]
            grads = torch.autograd.grad(out.sum(), inputs, allow_unused=True) if out.requires_grad \
                else [None] * len(inputs)
    finally:
        for handle in handles:
            handle.remove()
        for p in already_frozen:
            p.requires_grad_(False)
        model.train(was_training)
    param_grads, norm_grads = grads[:len(params)], grads[len(params):]
    return FrozenPart(level, tuple(n for n, g in zip(params, param_grads) if g is not None),
                      tuple(n for n, g in zip(norm_names, norm_grads) if g is not None))


def freeze_to_level(model: nn.Module, level: int, in_chans: int = 3, setting: str = "level") -> FrozenPart:
    """Set ``requires_grad=False`` on every parameter feature ``level`` depends on (nothing for -1); return
    what was frozen (its BatchNorm layers are left to the caller). ``setting`` names the option in errors."""
    part = level_dependencies(model, level, in_chans, setting)
    params = dict(model.named_parameters())
    for name in part.parameters:
        params[name].requires_grad_(False)
    return part


def level_of_freeze_at(freeze_at: int, strides: Sequence[int], built: int | None = None,
                       setting: str = "MODEL.BACKBONE.FREEZE_AT") -> int:
    """Detectron2's ``FREEZE_AT`` (ResNet meaning) as the feature level to freeze up to (-1: nothing).

    ``strides``: every level's stride; ``built``: the deepest level the model builds (default: the last).
    ``FREEZE_AT = k`` freezes what computes the deepest level at a stride of at most ``2**k`` (``res<k>``; the
    first level when even that is coarser: a stem that ends at stride 4), and at most level ``built``.
    """
    if isinstance(freeze_at, bool) or not isinstance(freeze_at, int) or freeze_at < 0:
        raise FreezeError(f"{setting}={freeze_at!r}: expected an int >= 0 (0 = nothing frozen, 1 = the stem, "
                          f"k = the stem and the first k-1 stages, as for ResNet)")
    if freeze_at == 0:
        return -1
    built = len(strides) - 1 if built is None else built
    within = [i for i, s in enumerate(strides) if int(math.log2(s)) <= freeze_at]
    return min(max(within, default=0), built)


def level_of_frozen_stages(frozen_stages: int, num_levels: int, setting: str = "frozen_stages") -> int:
    """MMSeg's ``frozen_stages`` as the feature level to freeze up to: -1 nothing, ``k`` levels 0..k."""
    if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not \
            -1 <= frozen_stages < num_levels:
        raise FreezeError(f"{setting}={frozen_stages!r}: expected -1 (nothing frozen) or a feature level "
                          f"0..{num_levels - 1} (frozen with every layer that computes it)")
    return frozen_stages
