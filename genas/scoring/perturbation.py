"""Measuring one sub-network of a supernet: BN recalibration, clean accuracy, and validation losses under
Gaussian weight perturbations (the L_i of paper Eq. 3-4).

Design (what makes candidates comparable and the evaluation cheap):

* Fixed batches. Recalibration and validation batches are drawn once (seeded) by :func:`fixed_batches`, kept
  as tensors on the device and reused for every candidate, so a score never depends on evaluation order.
* Exact BN statistics. :func:`recalibrated_bn` resets the running statistics and forwards the recalibration
  batches with ``momentum=None`` (a cumulative average): the running mean is then exactly the mean over those
  batches. The reference's momentum-0.1 update after a reset keeps 0.9^10 = 35% of the reset values after 10
  batches. Every BN of the supernet is reset, but only the BNs on the path see data, and the others are unused
  by this architecture; all running statistics (and momenta) are restored on exit, so scoring leaves every
  supernet tensor bit-identical.
* In-place perturbation. Only the path's parameters are perturbed, in place, from a saved copy of their values
  (no copy of the network per candidate), and copied back exactly afterwards.
* Common random numbers. With ``common_random_numbers`` the noise of a parameter at sigma index ``i`` comes from
  a generator seeded by ``(seed, i, parameter name)``: a parameter shared by two candidates gets the same draw
  in both, so candidates are compared under the same noise. Otherwise the architecture is part of the seed.
  Draws are made on the parameters' device (CPU and CUDA generators give different streams).
* Reference protocol (options, see the README table "Reference protocol vs defaults"): ``bn_recal="reference"``
  (reset to 0/1, momentum-0.1 EMA), ``fresh_draws`` (noise from one CPU generator and recalibration batches
  from one numpy generator, both running on from candidate to candidate as the reference's global RNGs),
  ``loss_mean="batches"`` (mean of per-batch means) and ``noise="cumulative"``. The reference also draws
  noise for parameters off the path; they cannot change the path's loss, so only the path is perturbed here.
* Precision. Losses are evaluated in fp32 unless an autocast dtype is given; the scorer refuses autocast when
  the smallest sigma is below the dtype's resolution at the weights' scale (a 1e-5 perturbation of a weight
  of 0.05 vanishes in bf16, whose spacing there is 2^-12 = 2.4e-4).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from genas.core.config import DEFAULTS
from genas.scoring.formulas import check_sigmas
from genas.spaces.base import Arch, Supernet, check_positions

__all__ = ["Batch", "PerturbationConfig", "fixed_batches", "recalibrated_bn", "autocast_context", "mean_loss",
           "top1_accuracy", "noise_seed", "top_hessian_eigenvector", "perturbed_losses", "loader_iteration_draw"]

Batch = tuple[torch.Tensor, torch.Tensor]
Forward = Callable[[torch.Tensor], torch.Tensor]

NOISE_MODES = ("independent", "cumulative")
DIRECTIONS = ("random", "hessian")
LOSS_MEANS = ("samples", "batches")
BN_RECAL_MODES = ("exact", "reference")
NOISE_STREAMS = ("path", "reference")


# Defaults are the config's (genas.core.config.DEFAULTS): one place for every default of the suite.
_SCORE_DEFAULTS = DEFAULTS["score"]


@dataclass(frozen=True)
class PerturbationConfig:
    """How the weights of a path are perturbed for the losses L_1..L_t.

    ``noise``: ``independent`` = theta + sigma_i * z_i (paper Eq. 3-4); ``cumulative`` = the reference code's
    theta_i = theta_{i-1} + (sigma_i - sigma_{i-1}) * z_i (sigma_0 = 0), one draw per sigma.
    ``direction``: ``random`` (z_i ~ N(0, I)) or ``hessian`` (the top eigenvector v of the Hessian of the
    validation loss w.r.t. the path parameters, found by power iteration, scaled to sqrt(n) v so that its
    length equals the expected length of an n-dimensional standard normal draw; every sigma uses it).
    ``positions``: ``all`` (every weight of the sub-network, the paper's default) or ``cells``.
    ``noise_stream``: ``path`` (draws for the path's parameters only: per-parameter seeds, or with
    ``fresh_draws`` one running CPU generator in path order) or ``reference`` (the reference code's stream: one
    running CPU generator seeded by ``seed``, ``torch.normal(0, std, size)`` for EVERY supernet parameter in
    the reference's ``named_parameters()`` order, :meth:`Supernet.reference_noise_layout`; draws of parameters
    off the path are made and discarded, so the path's draws are the reference's, number for number).
    """

    sigmas: tuple[float, ...]
    noise: str = _SCORE_DEFAULTS["noise"]
    common_random_numbers: bool = _SCORE_DEFAULTS["common_random_numbers"]
    positions: str = _SCORE_DEFAULTS["positions"]
    direction: str = _SCORE_DEFAULTS["direction"]
    seed: int = _SCORE_DEFAULTS["seed"]
    noise_stream: str = _SCORE_DEFAULTS["noise_stream"]
    hessian_iters: int = _SCORE_DEFAULTS["hessian_iters"]
    hessian_tol: float = _SCORE_DEFAULTS["hessian_tol"]
    fresh_draws: bool = _SCORE_DEFAULTS["fresh_draws"]
    loss_mean: str = _SCORE_DEFAULTS["loss_mean"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", check_sigmas(self.sigmas))
        check_positions(self.positions)
        if self.noise not in NOISE_MODES:
            raise ValueError(f"score.noise must be one of {NOISE_MODES}, got {self.noise!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"score.direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.hessian_iters < 1:
            raise ValueError(f"hessian_iters must be >= 1, got {self.hessian_iters}")
        if self.loss_mean not in LOSS_MEANS:
            raise ValueError(f"score.loss_mean must be one of {LOSS_MEANS}, got {self.loss_mean!r}")
        if self.fresh_draws and self.common_random_numbers:
            raise ValueError("score.fresh_draws=true (noise from one stream that runs on across candidates, as the "
                             "reference) contradicts score.common_random_numbers=true: set it to false")
        if self.noise_stream not in NOISE_STREAMS:
            raise ValueError(f"score.noise_stream must be one of {NOISE_STREAMS}, got {self.noise_stream!r}")
        if self.noise_stream == "reference" and not self.fresh_draws:
            raise ValueError("score.noise_stream=reference is the reference's running generator: it needs "
                             "score.fresh_draws=true (and score.common_random_numbers=false)")
        if self.fresh_draws and self.direction == "hessian":
            raise ValueError("score.fresh_draws applies to random directions only (score.direction=random)")


class _Keyed(Dataset):
    """``dataset[keys[i]]``: integer indices, or ``(index, augmentation seed)`` keys of a ``SearchSplit``."""

    def __init__(self, dataset: Dataset, keys: Sequence):
        self.dataset, self.keys = dataset, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        return self.dataset[self.keys[i]]


def fixed_batches(dataset: Dataset, num_batches: int | None, batch_size: int, seed: int | np.random.Generator,
                  device: torch.device | str, memory_format: torch.memory_format = torch.contiguous_format,
                  shuffle: bool = True) -> list[Batch]:
    """``num_batches`` batches of ``batch_size`` samples drawn once without replacement (seeded) from
    ``dataset``, as tensors on ``device`` in ``memory_format``. ``num_batches=None`` takes the whole dataset
    (in a seeded order). Fewer samples than asked for give fewer batches (the last may be smaller).
    ``shuffle=False``: the dataset's own order (the reference's validation loader).

    ``seed`` a ``numpy.random.Generator`` (``score.fresh_draws``): the order is drawn from it, and so are the
    augmentation seeds of an augmented ``SearchSplit`` (fresh random crops, as a shuffled training loader);
    the generator advances, so each call gives other batches."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"number of batches must be >= 1 or None (= whole split), got {num_batches}")
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot draw scoring batches from an empty dataset")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    order = rng.permutation(n) if shuffle else np.arange(n)
    if num_batches is not None:
        order = order[:num_batches * batch_size]
    keys: list = order.tolist()
    if isinstance(seed, np.random.Generator) and getattr(dataset, "augment", None) is not None:
        keys = [(int(i), int(s)) for i, s in zip(order, rng.integers(0, 2**62, size=len(order)))]
    loader = DataLoader(_Keyed(dataset, keys), batch_size=batch_size, shuffle=False)
    return [(x.to(device).contiguous(memory_format=memory_format), torch.as_tensor(y).long().to(device))
            for x, y in loader]


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``, or nothing (fp32) when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _running_stat_bns(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def recalibrated_bn(model: nn.Module, forward: Forward, batches: Sequence[Batch],
                    amp_dtype: torch.dtype | None = None, mode: str = "exact") -> Iterator[None]:
    """Inside the block, BN running statistics are the exact cumulative average over ``batches`` of the
    path run by ``forward``, and ``model`` is in eval mode. On exit every BN buffer and momentum, and the
    train/eval mode, are restored.

    ``mode="reference"`` (GeNAS ``tester_wlm``): running mean / var reset to 0 / 1, then each batch updates
    them with the BN's own momentum (0.1): an EMA that still holds 0.9^k of the reset values after k batches."""
    if mode not in BN_RECAL_MODES:
        raise ValueError(f"score.bn_recal must be one of {BN_RECAL_MODES}, got {mode!r}")
    bns = _running_stat_bns(model)
    means = [m.running_mean for m in bns]
    variances = [m.running_var for m in bns]
    counts = [m.num_batches_tracked for m in bns]
    momenta = [m.momentum for m in bns]
    # multi-tensor copies: a few kernels for the ~200 BNs of a supernet instead of ~2,000 (launch-bound on a GPU)
    saved = [[t.clone() for t in group] for group in (means, variances, counts)] if bns else []
    was_training = model.training
    try:
        with torch.no_grad():
            if bns:
                torch._foreach_zero_(means)
                torch._foreach_zero_(variances)
                torch._foreach_add_(variances, 1.0)
                for c in counts:
                    c.zero_()
        model.train()
        with torch.no_grad():
            for k, (x, _) in enumerate(batches):
                if mode == "exact":
                    # cumulative moving average, the exact statistics of the recalibration batches: the factor
                    # 1/(k+1) that momentum=None makes torch compute per BN with a host sync (float(num_batches_
                    # tracked)), set here once per batch (each BN of a supernet runs once per forward)
                    for m in bns:
                        m.momentum = 1.0 / (k + 1)
                with autocast_context(x.device, amp_dtype):
                    forward(x)
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.eval()
        yield
    finally:
        with torch.no_grad():
            for m, momentum in zip(bns, momenta):
                m.momentum = momentum
            if bns:
                torch._foreach_copy_(means, saved[0])
                torch._foreach_copy_(variances, saved[1])
                torch._foreach_copy_(counts, saved[2])
        model.train(was_training)


def _num_samples(batches: Sequence[Batch]) -> int:
    return sum(int(y.shape[0]) for _, y in batches)


def mean_loss(forward: Forward, batches: Sequence[Batch], amp_dtype: torch.dtype | None = None,
              loss_mean: str = "samples") -> float:
    """Mean cross-entropy over all samples of ``batches`` (no gradients; one host sync at the end);
    ``loss_mean="batches"``: the mean of the per-batch means (the reference; a short last batch weighs as
    much as a full one)."""
    total = None
    with torch.no_grad():
        for x, y in batches:
            with autocast_context(x.device, amp_dtype):
                logits = forward(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum").double()
            if loss_mean == "batches":
                loss = loss / y.shape[0]
            total = loss if total is None else total + loss
    return float(total) / (len(batches) if loss_mean == "batches" else _num_samples(batches))


def top1_accuracy(forward: Forward, batches: Sequence[Batch], amp_dtype: torch.dtype | None = None) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) over all samples of ``batches``."""
    correct = None
    with torch.no_grad():
        for x, y in batches:
            with autocast_context(x.device, amp_dtype):
                hits = (forward(x).argmax(dim=1) == y).sum()
            correct = hits if correct is None else correct + hits
    return int(correct) / _num_samples(batches)


def noise_seed(seed: int, sigma_index: int, name: str, arch: Arch | None = None) -> int:
    """A 63-bit generator seed for the draw of parameter ``name`` at sigma index ``sigma_index``.

    ``arch=None`` (common random numbers) makes the draw independent of the candidate; a hash (not Python's
    salted ``hash``) keeps it identical across processes and runs.
    """
    text = f"{seed}|{sigma_index}|{name}" + ("" if arch is None else f"|{tuple(int(g) for g in arch)}")
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & (2 ** 63 - 1)


def _standard_normal(param: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator(device=param.device).manual_seed(seed)
    return torch.randn(param.shape, generator=generator, device=param.device, dtype=param.dtype)


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((u * v).sum() for u, v in zip(a, b))


def _normalised(vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    norm = torch.sqrt(_dot(vectors, vectors))
    return [v / norm for v in vectors]


def _hessian_vector_product(loss_terms: Callable[[], Iterable[torch.Tensor]], params: Sequence[torch.Tensor],
                            vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """H v of the loss sum(loss_terms()) by double backward, one term (batch) at a time to bound memory."""
    out = [torch.zeros_like(p) for p in params]
    for loss in loss_terms():
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        pairs = [(g, v) for g, v in zip(grads, vector) if g is not None]
        if not pairs:
            continue
        hv = torch.autograd.grad(_dot(*zip(*pairs)), params, allow_unused=True)
        for o, h in zip(out, hv):
            if h is not None:
                o.add_(h)
    return out


def top_hessian_eigenvector(loss_terms: Callable[[], Iterable[torch.Tensor]], params: Sequence[torch.Tensor],
                            iters: int = 20, tol: float = 1e-4, seed: int = 0
                            ) -> tuple[float, list[torch.Tensor]]:
    """Eigenvalue of largest magnitude and its unit eigenvector (one tensor per parameter) of the Hessian of
    ``sum(loss_terms())`` w.r.t. ``params``, by power iteration with Hessian-vector products (PyHessian,
    Yao et al. 2019). Stops when the Rayleigh quotient changes by less than ``tol`` (relative). The sign is
    fixed so that the entry of largest magnitude is positive, making the direction deterministic."""
    generator = torch.Generator(device=params[0].device).manual_seed(seed)
    vector = _normalised([torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
                          for p in params])
    eigenvalue = math.nan
    with torch.enable_grad():
        for _ in range(iters):
            hv = _hessian_vector_product(loss_terms, params, vector)
            estimate = float(_dot(hv, vector))
            if float(_dot(hv, hv)) == 0.0:  # the loss is flat along every direction: any vector will do
                return 0.0, vector
            vector = _normalised(hv)
            converged = abs(estimate - eigenvalue) <= tol * abs(estimate)
            eigenvalue = estimate
            if converged:
                break
    flat = torch.cat([v.reshape(-1) for v in vector])
    if flat[flat.abs().argmax()] < 0:
        vector = [-v for v in vector]
    return eigenvalue, [v.detach() for v in vector]


def _hessian_direction(supernet: Supernet, arch: Arch, params: Sequence[torch.Tensor], batches: Sequence[Batch],
                       cfg: PerturbationConfig) -> list[torch.Tensor]:
    """sqrt(n) times the top Hessian eigenvector of the mean validation loss over ``batches``."""
    n = _num_samples(batches)

    def loss_terms() -> Iterator[torch.Tensor]:
        for x, y in batches:
            yield F.cross_entropy(supernet(x, arch).float(), y, reduction="sum") / n

    seed = noise_seed(cfg.seed, 0, "hessian-start", None if cfg.common_random_numbers else arch)
    _, vector = top_hessian_eigenvector(loss_terms, params, cfg.hessian_iters, cfg.hessian_tol, seed)
    scale = math.sqrt(sum(p.numel() for p in params))
    return [v * scale for v in vector]


def _perturb_in_turn(targets: Sequence[torch.Tensor], originals: Sequence[torch.Tensor], names: Sequence[str],
                     arch: Arch, cfg: PerturbationConfig, hessian: Sequence[torch.Tensor] | None,
                     generator: torch.Generator | None = None,
                     layout: Sequence[tuple[str | None, tuple[int, ...]]] | None = None) -> Iterator[int]:
    """Write the perturbation of each sigma in turn into ``targets`` (which start equal to ``originals``);
    yields the sigma index once ``targets`` hold it. With ``generator`` (``score.fresh_draws``) every draw
    comes from that CPU generator, in parameter order, as the reference's ``torch.normal`` calls; with
    ``layout`` too (``score.noise_stream=reference``) the generator draws every tensor of ``layout`` and the
    draws of ``names`` are kept."""
    if layout is not None:
        yield from _perturb_reference_stream(targets, originals, names, cfg, generator, layout)
        return
    previous_sigma = 0.0
    for i, sigma in enumerate(cfg.sigmas):
        for k, (target, start, name) in enumerate(zip(targets, originals, names)):
            if hessian is not None:
                direction = hessian[k]
            elif generator is not None:
                direction = torch.randn(start.shape, generator=generator, dtype=start.dtype).to(start.device)
            else:
                direction = _standard_normal(start, noise_seed(cfg.seed, i, name,
                                                               None if cfg.common_random_numbers else arch))
            if cfg.noise == "independent":
                target.copy_(start).add_(direction, alpha=sigma)
            else:
                target.add_(direction, alpha=sigma - previous_sigma)
        previous_sigma = sigma
        yield i


def loader_iteration_draw(generator: torch.Generator) -> None:
    """The draw a ``torch.utils.data.DataLoader`` takes from the global generator each time it is iterated
    (``_BaseDataLoaderIter`` draws its workers' base seed with ``random_()`` on an int64 scalar): the reference
    iterates its loaders inside the scored function, so these draws sit between its noise draws."""
    torch.empty((), dtype=torch.int64).random_(generator=generator)


def _perturb_reference_stream(targets: Sequence[torch.Tensor], originals: Sequence[torch.Tensor],
                              names: Sequence[str], cfg: PerturbationConfig, generator: torch.Generator,
                              layout: Sequence[tuple[str | None, tuple[int, ...]]]) -> Iterator[int]:
    """The reference's draws (GeNAS ``get_cand_wlm``): per sigma, the validation loader's iteration draw, then
    ``torch.normal(0, std, size)`` for every
    tensor of ``layout`` in order (std = sigma_i - sigma_(i-1) cumulatively, sigma_i independently), cast to
    the parameter's dtype and device and added; draws of tensors off the path are discarded."""
    position = {name: k for k, name in enumerate(names)}
    previous_sigma = 0.0
    for i, sigma in enumerate(cfg.sigmas):
        loader_iteration_draw(generator)  # the reference's iter(val_loader) before each sigma's noise
        std = sigma if cfg.noise == "independent" else sigma - previous_sigma
        if cfg.noise == "independent":
            for target, start in zip(targets, originals):
                target.copy_(start)
        for name, shape in layout:
            noise = torch.normal(0.0, std, size=shape, generator=generator)
            k = position.get(name) if name is not None else None
            if k is not None:
                targets[k].add_(noise.to(dtype=targets[k].dtype, device=targets[k].device))
        previous_sigma = sigma
        yield i


def perturbed_losses(supernet: Supernet, arch: Arch, batches: Sequence[Batch], cfg: PerturbationConfig,
                     amp_dtype: torch.dtype | None = None, generator: torch.Generator | None = None,
                     layout: Sequence[tuple[str | None, tuple[int, ...]]] | None = None) -> list[float]:
    """Validation losses L_1..L_t of ``arch`` with its path parameters perturbed at each sigma of ``cfg``.

    Call it with BN already recalibrated and the supernet in eval mode (inside :func:`recalibrated_bn`).
    The path parameters are restored bit-exactly before returning, also on error. Non-finite losses are
    returned as they are; the caller decides what they mean.
    """
    names = supernet.path_parameter_names(arch, cfg.positions)
    params = supernet.path_parameters(arch, cfg.positions)
    originals = [p.detach().clone() for p in params]
    hessian = (_hessian_direction(supernet, arch, params, batches, cfg) if cfg.direction == "hessian" else None)
    if cfg.fresh_draws and generator is None:
        raise ValueError("score.fresh_draws needs the scorer's noise generator (pass generator=)")
    if cfg.noise_stream == "reference" and layout is None:
        raise ValueError("score.noise_stream=reference needs the reference's parameter layout (pass layout=, "
                         "genas.scoring.reference_stream.reference_noise_layout)")
    losses = []
    try:
        with torch.no_grad():
            for _ in _perturb_in_turn(params, originals, names, arch, cfg, hessian, generator,
                                      layout if cfg.noise_stream == "reference" else None):
                losses.append(mean_loss(lambda x: supernet(x, arch), batches, amp_dtype, cfg.loss_mean))
    finally:
        with torch.no_grad():
            for p, start in zip(params, originals):
                p.copy_(start)
    return losses
