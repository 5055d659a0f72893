"""Average pooling of the supernets, with a second implementation of the same function.

:class:`AvgPool2d` is ``torch.nn.AvgPool2d`` (same arguments, attributes, repr and state dict: none) whose
forward runs, per device type, either

* ``native``: ``F.avg_pool2d``, torch's pooling kernel (the eager reference), or
* ``conv``: a depthwise convolution with a constant all-ones kernel (the window sums) divided by a
  precomputed divisor map (the number of input pixels in each window: ``count_include_pad=False`` counts only
  the pixels inside the image, so 4 at a corner, 6 on an edge, 9 inside for a 3x3 window). Exactly the
  function of ``native`` up to float summation order (fp32: relative differences of ~1e-7;
  ``tests/test_fast_paths.py`` checks outputs, gradients and flatness losses against ``native``).

Why: on an H200, ``aten::avg_pool2d`` (NB201's ``avg_pool_3x3`` and the ResNet blocks' 2x2 pooling) took 64% of
the GPU time of NB201 flatness scoring (547 us per call, 3x a convolution call of the same passes).

Which one runs is a module-level switch (it changes no result, so it is not a config key and a checkpoint does
not record it): :func:`set_pool_impl` (``"auto"``, ``"native"``, ``"conv"``; for one device type or all),
:func:`pool_impl` (the same as a context manager), or the environment variable ``GENAS_AVG_POOL`` read at
import (``conv``, or ``cuda=conv,cpu=native``). ``auto`` resolves through :data:`AUTO`, which holds for each
device type the implementation measured faster there:

* ``cpu``: ``conv``. Measured on the 2-core x86 CPU (1 thread, process CPU time, ``benchmarks/bench_fast_paths.py``):
  at NB201's shapes (batch 64 and 256) the 3x3 pooling forward is 3.7-5.2x faster in NCHW and 1.0-1.9x in NHWC,
  forward + backward 2.7-4.5x (the 2x2 pooling: 1.5-2.1x NCHW, 0.4-1.2x NHWC); end to end the NB201 C=16 N=5
  training step (batch 64) 1.32x, the DARTS C=16 8-layer step 1.04x, NB201 flatness scoring (channels_last) 1.05x.
* ``cuda``: ``native`` until a GPU run of ``benchmarks/gpu_check.py`` measures ``conv`` faster: its NB201 scoring
  rows time both implementations in the same run and say which one ``auto`` should be. A speed option is a
  default only where it was measured faster, and the conv path has not been timed on a GPU yet (PyTorch may
  route an fp32 depthwise convolution to its own ``conv_depthwise2d`` kernel, which was slow on the H200 in the
  backbone profile).
* any other device type: ``native``.

The conv path runs only where it is the same function at no risk: float32 / float64 inputs (a bf16 window sum
would be rounded before the division, where torch's kernel rounds once), 4-D NCHW or NHWC inputs, no
``ceil_mode`` and no ``divisor_override``; it runs outside autocast (the ones kernel in the input's dtype, as
``avg_pool2d``, which autocast does not cast) and never while TorchScript / FX / fvcore (``torch.jit``) trace or
``torch.compile`` compiles (they see ``avg_pool2d``: FLOP counts of :mod:`genas.cost` are unchanged, and
inductor generates its own pooling kernel). The kernel and the divisor map are cached per shape, device and
dtype (created outside ``torch.inference_mode`` so that a later training step can save them for backward).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

__all__ = ["POOL_IMPLS", "AUTO", "AvgPool2d", "set_pool_impl", "get_pool_impl", "pool_impl", "avg_pool2d_conv"]

POOL_IMPLS = ("auto", "native", "conv")
#: What ``auto`` is on each device type: the implementation measured faster there (see the module docstring).
AUTO: dict[str, str] = {"cpu": "conv", "cuda": "native"}
ENV_VAR = "GENAS_AVG_POOL"

_settings: dict[str | None, str] = {}  # device type (None: every type without its own) -> impl
_cache: dict[tuple, torch.Tensor] = {}
_CACHE_LIMIT = 512


def _check(impl: str) -> str:
    if impl not in POOL_IMPLS:
        raise ValueError(f"average pooling implementation must be one of {POOL_IMPLS}, got {impl!r}")
    return impl


def set_pool_impl(impl: str, device_type: str | None = None) -> None:
    """Use ``impl`` (``auto``, ``native``, ``conv``) for inputs on ``device_type`` (``"cpu"``, ``"cuda"``;
    ``None``: every device type that has no setting of its own)."""
    _settings[device_type] = _check(impl)


def get_pool_impl(device_type: str) -> str:
    """The implementation (``native`` or ``conv``) that inputs on ``device_type`` get now."""
    impl = _settings.get(device_type, _settings.get(None, "auto"))
    return AUTO.get(device_type, "native") if impl == "auto" else impl


@contextlib.contextmanager
def pool_impl(impl: str, device_type: str | None = None) -> Iterator[None]:
    """:func:`set_pool_impl` inside the block; the previous settings come back on exit."""
    saved = dict(_settings)
    try:
        set_pool_impl(impl, device_type)
        yield
    finally:
        _settings.clear()
        _settings.update(saved)


def _read_env() -> None:
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return
    for item in text.split(","):
        device_type, sep, impl = item.strip().rpartition("=")
        try:
            set_pool_impl(impl.strip(), device_type.strip() if sep else None)
        except ValueError as e:
            raise ValueError(f"{ENV_VAR}={text!r}: {e}") from None


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _cached(key: tuple, make) -> torch.Tensor:
    tensor = _cache.get(key)
    if tensor is None:
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        with torch.inference_mode(False), torch.no_grad():
            tensor = _cache[key] = make()
    return tensor


def _ones_kernel(channels: int, kernel: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _cached(("ones", channels, kernel, device, dtype),
                   lambda: torch.ones(channels, 1, *kernel, device=device, dtype=dtype))


def _divisor(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
             count_include_pad: bool, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, 1, H_out, W_out): the pixels each window averages over (exact small integers)."""
    def make() -> torch.Tensor:
        ones = torch.ones(1, 1, *size, dtype=torch.float64)
        if count_include_pad:  # the padded image counts; floor mode keeps every window inside it
            ones = F.pad(ones, (padding[1], padding[1], padding[0], padding[0]), value=1.0)
            pad = (0, 0)
        else:
            pad = padding
        counts = F.conv2d(ones, torch.ones(1, 1, *kernel, dtype=torch.float64), stride=stride, padding=pad)
        return counts.to(device=device, dtype=dtype)
    return _cached(("divisor", size, kernel, stride, padding, count_include_pad, device, dtype), make)


def avg_pool2d_conv(x: torch.Tensor, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                    padding: int | tuple[int, int] = 0, count_include_pad: bool = True) -> torch.Tensor:
    """``F.avg_pool2d(x, kernel_size, stride, padding, count_include_pad=...)`` (floor mode) computed as a
    depthwise convolution with an all-ones kernel divided by the window sizes."""
    kernel = _pair(kernel_size)
    stride_ = _pair(stride) if stride not in (None, ()) else kernel
    pad = _pair(padding)
    weight = _ones_kernel(x.shape[1], kernel, x.device, x.dtype)
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            sums = F.conv2d(x, weight, None, stride_, pad, 1, x.shape[1])
    else:
        sums = F.conv2d(x, weight, None, stride_, pad, 1, x.shape[1])
    divisor = _divisor((x.shape[2], x.shape[3]), kernel, stride_, pad, count_include_pad, x.device, x.dtype)
    return sums.div_(divisor)


def _tracing() -> bool:
    return (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or is_fx_symbolic_tracing())


class AvgPool2d(nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` whose forward is :func:`avg_pool2d_conv` where the switch of the input's device
    type says ``conv`` (see the module docstring); otherwise torch's own pooling."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (not _tracing() and input.dtype in (torch.float32, torch.float64) and input.dim() == 4
                and not self.ceil_mode and self.divisor_override is None
                and get_pool_impl(input.device.type) == "conv"):
            return avg_pool2d_conv(input, self.kernel_size, self.stride, self.padding, self.count_include_pad)
        return super().forward(input)


_read_env()
