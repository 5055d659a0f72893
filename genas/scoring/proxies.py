"""Two training-free NAS proxies, evaluated on a sub-network of a trained supernet (or on any network).

``naswot`` (Mellor et al., "Neural Architecture Search without Training", ICML 2021)
    One batch of B images goes through the network; every ReLU's input is binarised per unit (``x > 0``) and
    the codes of all ReLUs that RUN are concatenated into ``c`` (B x N_A). The kernel
    ``K = c c^T + (1 - c)(1 - c)^T`` counts, for each pair of images, the units on which they agree (K_ii =
    N_A). The score is ``log |det K|`` (``slogdet``; a singular K, e.g. two identical images, gives -inf).
    On a supernet only the ReLUs of the sampled path run, so the codes are those of the sub-network. ReLUs
    are found as ``nn.ReLU`` modules (a forward PRE-hook, so in-place ReLUs are read before they overwrite
    their input); K is accumulated in float64.

``synflow`` (Tanaka et al., NeurIPS 2020; as a NAS proxy in Abdelfattah et al., "Zero-Cost Proxies for
Lightweight NAS", ICLR 2021)
    Every parameter is replaced by its absolute value, in float64; one all-ones input (1 x C x H x W) goes
    through the network and ``R = sum(output)``; the score is ``sum over the weights of Conv and Linear layers
    of |theta * dR/dtheta|``. Batch norm is handled as in Abdelfattah's code (``bn=False``: the network is
    rebuilt without BN layers): each BN layer is an identity here (a forward hook passes its input through).
    With positive weights and a positive input every ReLU passes everything, so R is a polynomial in the
    weights. The network's own tensors are never modified: the float64 absolute copies are substituted with
    ``torch.func.functional_call`` (nothing to restore, also on error).

Both functions take ``forward_args`` so that a supernet can be called as ``model(x, arch)``;
``param_names`` restricts synflow's sum to the sub-network's weights (``supernet.path_parameter_names``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["PROXIES", "relu_codes", "naswot_kernel", "naswot_from_codes", "naswot", "synflow"]

PROXIES = ("naswot", "synflow")


def relu_codes(model: nn.Module, forward: Callable[[torch.Tensor], Any], x: torch.Tensor) -> torch.Tensor:
    """The binary ReLU codes (B x N_A, float64, on ``x``'s device) of the ReLUs of ``model`` that run in
    ``forward(x)``, concatenated in the order they run (no gradients)."""
    codes: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple) -> None:
        codes.append((inputs[0].detach() > 0).reshape(inputs[0].shape[0], -1).to(torch.float64))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            forward(x)
    finally:
        for h in handles:
            h.remove()
    if not codes:
        raise ValueError("naswot: no nn.ReLU ran in the forward pass; the proxy needs ReLU activations")
    return torch.cat(codes, dim=1)


def naswot_kernel(codes: torch.Tensor) -> torch.Tensor:
    """``K = c c^T + (1 - c)(1 - c)^T`` (Hamming agreement counts) of binary codes ``c`` (B x N)."""
    c = codes.to(torch.float64)
    return c @ c.T + (1.0 - c) @ (1.0 - c).T


def naswot_from_codes(codes: torch.Tensor) -> float:
    """``log |det K|`` of the code kernel; ``-inf`` when K is singular."""
    sign, logabsdet = torch.linalg.slogdet(naswot_kernel(codes).cpu())
    return -math.inf if float(sign) == 0.0 else float(logabsdet)


def naswot(model: nn.Module, x: torch.Tensor, *forward_args: Any) -> float:
    """NASWOT score of ``model(x, *forward_args)`` on the batch ``x`` (higher is better). The model is run
    as it is (call it in eval mode with recalibrated BN for a supernet path; see ``ArchScorer``)."""
    if x.shape[0] < 2:
        raise ValueError(f"naswot needs a batch of at least 2 images, got {x.shape[0]}")
    return naswot_from_codes(relu_codes(model, lambda inp: model(inp, *forward_args), x))


def _weight_names(model: nn.Module) -> list[str]:
    return [f"{name}.weight" if name else "weight" for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and getattr(m, "weight", None) is not None]


def synflow(model: nn.Module, input_shape: Sequence[int], *forward_args: Any,
            param_names: Iterable[str] | None = None, device: torch.device | str | None = None) -> float:
    """SynFlow score of ``model(ones, *forward_args)`` (higher is better), ``input_shape`` = (C, H, W).

    ``param_names``: the parameters whose Conv/Linear weights are summed (default: all); parameters outside
    it still take part in the forward (as absolute values) if the forward uses them.
    """
    params = dict(model.named_parameters())
    if device is None:
        device = next(iter(params.values())).device if params else torch.device("cpu")
    chosen = set(params) if param_names is None else set(param_names)
    unknown = sorted(chosen - set(params))
    if unknown:
        raise KeyError(f"synflow: unknown parameter name(s) {unknown[:3]}")
    weights = [n for n in _weight_names(model) if n in chosen]
    if not weights:
        raise ValueError("synflow: no Conv2d/Linear weight among the chosen parameters")
    absolute = {n: p.detach().to(device, torch.float64).abs().requires_grad_(n in weights)
                for n, p in params.items()}
    buffers = {n: (b.detach().to(device, torch.float64) if b.is_floating_point() else b.detach().clone())
               for n, b in model.named_buffers()}

    def identity(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return inputs[0].clone()  # a fresh tensor: a following in-place ReLU must not edit the BN's input

    handles = [m.register_forward_hook(identity) for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = model.training
    try:
        model.eval()  # BN layers are identities anyway; eval keeps dropout-like modules deterministic
        ones = torch.ones((1, *tuple(input_shape)), dtype=torch.float64, device=device)
        with torch.enable_grad():
            output = functional_call(model, {**absolute, **buffers}, (ones, *forward_args))
            total = output.sum()
            grads = torch.autograd.grad(total, [absolute[n] for n in weights], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    score = sum(float((absolute[n].detach() * g).abs().sum()) for n, g in zip(weights, grads) if g is not None)
    return float(score)
