"""Gradient checkpointing of a timm model for every task adapter (Detectron2 ``MODEL.GENAS.GRAD_CHECKPOINT``,
MMSeg ``model.backbone.grad_checkpointing``).

A timm ``features_only`` model built through ``forward_intermediates`` (the DARTS networks: timm's
``FeatureGetterNet``) has no ``set_grad_checkpointing`` of its own; the network it wraps (``.model``) has. The
helpers here reach that network, turn checkpointing on, and say clearly when a model cannot do it.
"""
from __future__ import annotations

from torch import nn

from genas.core.errors import UsageError

__all__ = ["GradCheckpointError", "check_bool_setting", "checkpointed_network", "set_grad_checkpointing"]


class GradCheckpointError(UsageError):
    """A gradient-checkpointing setting that cannot be honoured; the message names the setting."""


def check_bool_setting(value: object, setting: str, error: type[UsageError] = GradCheckpointError) -> bool:
    """``value`` when it is a bool; else an ``error`` naming ``setting`` (a config value such as ``"yes"`` or
    ``1`` would otherwise be read as true without a word)."""
    if not isinstance(value, bool):
        raise error(f"{setting}={value!r}: expected True or False")
    return value


def checkpointed_network(model: nn.Module) -> nn.Module:
    """The module whose ``set_grad_checkpointing`` applies to ``model``: ``model`` itself, or the network a timm
    feature wrapper without that method (``FeatureGetterNet``) holds as ``.model``."""
    if hasattr(model, "set_grad_checkpointing"):
        return model
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and hasattr(inner, "set_grad_checkpointing"):
        return inner
    return model


def set_grad_checkpointing(model: nn.Module, enable: bool = True, setting: str = "grad_checkpointing",
                           error: type[UsageError] = GradCheckpointError) -> nn.Module:
    """Turn timm's gradient checkpointing of ``model`` (or of the network its feature wrapper holds) on or off;
    return the module it was set on. A model that does not support it is an ``error`` naming ``setting``."""
    check_bool_setting(enable, setting, error)
    target = checkpointed_network(model)
    try:
        target.set_grad_checkpointing(enable)
    except (AttributeError, NotImplementedError, AssertionError) as e:
        raise error(f"{setting}={enable}: {type(model).__name__} does not support gradient "
                                  f"checkpointing ({type(e).__name__}: {e or 'no set_grad_checkpointing'}); "
                                  f"set it to False") from None
    return target
