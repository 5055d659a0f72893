"""Operations both search spaces build on: ReLU -> Conv -> BN, and the ``none`` op.

Attribute names (``self.op`` Sequential) are those of the benchmark's and the reference DARTS code's
modules, so state-dict keys of NB201 networks and of published DARTS checkpoints load unchanged. Blocks
keep the input's memory format (channels_last works) and never move to a device themselves.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ReLUConvBN", "Zero"]


class ReLUConvBN(nn.Module):
    """ReLU -> Conv (no bias) -> BN: NB201's ``nor_conv_kxk`` and reduction convs, DARTS's cell preprocessing.

    ``padding`` defaults to ``kernel_size // 2`` (same size at stride 1). ``affine`` and
    ``track_running_stats`` are the BN's (supernets of the reference code differ there: see the space options).
    """

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int = 1, padding: int | None = None,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),  # the input node feeds other edges too: never in place
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride,
                      padding=kernel_size // 2 if padding is None else padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Zero(nn.Module):
    """The ``none`` op: ``x * 0`` (subsampled at stride 2), which unlike fresh zeros stays in the autograd graph
    as in the reference code. Cells skip ``none`` edges instead of running it; it keeps module index == op index."""

    def __init__(self, stride: int = 1):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)
