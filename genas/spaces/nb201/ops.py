"""Building blocks of NAS-Bench-201 networks: the five cell operations and the ResNet reduction block.

Module layout and attribute names follow the benchmark's own networks (``op``, ``conv_a``, ``conv_b``,
``downsample``), so parameter names and counts of :mod:`genas.spaces.nb201` match the benchmark's.
All blocks keep the input's memory format (channels_last works) and never move to a device themselves.
Pooling is :class:`genas.spaces.pooling.AvgPool2d` (``torch.nn.AvgPool2d`` with a depthwise-convolution fast
path selectable per device type; the same function, no state).
"""
from __future__ import annotations

import torch
from torch import nn

from genas.spaces.ops import ReLUConvBN, Zero
from genas.spaces.pooling import AvgPool2d

__all__ = ["OP_NAMES", "Zero", "ReLUConvBN", "ResNetBasicBlock", "make_op"]

# Gene value i of an architecture is OP_NAMES[i]; the order is the benchmark's.
OP_NAMES = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


class ResNetBasicBlock(nn.Module):
    """Stride-2 residual block between the stages: two ReLUConvBN 3x3 and an AvgPool(2)+Conv1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride=2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, stride=1)
        self.downsample = nn.Sequential(
            AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(c_in, c_out, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


def make_op(name: str, channels: int, affine: bool = True) -> nn.Module:
    """The cell operation ``name`` at ``channels`` channels, stride 1 (NB201 cells never change the shape).
    ``affine``: whether the conv ops' BN has a scale and shift (the RLNAS supernet: ``False``)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1, affine=affine)
    if name == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3, affine=affine)
    if name == "avg_pool_3x3":
        return AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"unknown NAS-Bench-201 op {name!r}; choose one of {OP_NAMES}")
