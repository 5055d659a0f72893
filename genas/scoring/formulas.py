"""The architecture scores of GeNAS as pure functions of measured numbers (paper Eq. 3-5, RLNAS angle).

Everything that needs a network (perturbed losses, BN recalibration, accuracy) lives in
:mod:`genas.scoring.perturbation`; the metric combination lives in :mod:`genas.scoring.scorer`. Keeping the formulas here,
free of torch modules, lets them be checked against hand-computed values.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["check_sigmas", "flatness_from_losses", "combined_score", "angle_between", "REFERENCE_GAMMA",
           "REFERENCE_FLATNESS_EPS"]

#: gamma of Eq. 5 in the published runs (GeNAS README: angle+flatness 16, paper Table 8's best; Table 9's best
#: for accuracy+flatness is 32). ``score.gamma`` defaults to 1 for every metric; the reference presets set these.
REFERENCE_GAMMA = {"angle+flatness": 16.0, "accuracy+flatness": 32.0}
#: The epsilon the reference adds to the flatness denominator (``wlm = 1 / (poor_minima + 1e-5)``).
REFERENCE_FLATNESS_EPS = 1e-5


def check_sigmas(sigmas: Sequence[float]) -> tuple[float, ...]:
    """``sigmas`` as a tuple of floats; ``ValueError`` unless they are positive and strictly increasing."""
    values = tuple(float(s) for s in sigmas)
    if not values:
        raise ValueError("sigmas is empty: give at least one perturbation std, e.g. score.sigmas=[2e-3,1e-2,2e-2]")
    if any(not math.isfinite(s) or s <= 0 for s in values):
        raise ValueError(f"sigmas must be finite and > 0, got {list(values)}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"sigmas must be strictly increasing (sigma_1 < ... < sigma_t), got {list(values)}")
    return values


def flatness_from_losses(losses: Sequence[float], sigmas: Sequence[float], alpha: float = 1.0,
                         eps: float = 0.0) -> float:
    """Flatness F of paper Eq. 4 (Eq. 3 when ``alpha == 0``)::

        F = 1 / ( sum_{i=1}^{t-1} |(L_{i+1} - L_i) / (sigma_{i+1} - sigma_i)|  +  alpha * |L_1 / sigma_1|  +  eps )

    ``losses[i]`` is the validation loss with weights perturbed at std ``sigmas[i]``. By default (``eps=0``),
    unlike the reference code (``eps=1e-5``, :data:`REFERENCE_FLATNESS_EPS`), no epsilon is added to the
    denominator: a denominator of exactly 0 (identical losses, ``alpha=0``) means a perfectly flat curve and
    returns ``inf``. Non-finite losses raise ``ValueError``; the scorer checks them first and gives such a
    candidate the worst score.
    """
    sig = check_sigmas(sigmas)
    vals = [float(v) for v in losses]
    if len(vals) != len(sig):
        raise ValueError(f"got {len(vals)} losses for {len(sig)} sigmas; one loss per sigma is needed")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"non-finite loss in {vals}: flatness is undefined")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if alpha == 0 and len(sig) < 2:
        raise ValueError("alpha=0 (Eq. 3) needs at least two sigmas: with one sigma the sum is empty")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"score.flatness_eps must be finite and >= 0, got {eps}")
    slopes = sum(abs((vals[i + 1] - vals[i]) / (sig[i + 1] - sig[i])) for i in range(len(sig) - 1))
    denominator = slopes + alpha * abs(vals[0] / sig[0]) + eps
    return math.inf if denominator == 0 else 1.0 / denominator


def combined_score(base: float, flatness: float, gamma: float, sigma_1: float) -> float:
    """Paper Eq. 5: ``S + gamma * beta * F`` with ``beta = 1 / sigma_1`` (scales F to the range of S)."""
    if sigma_1 <= 0:
        raise ValueError(f"sigma_1 must be > 0, got {sigma_1}")
    return float(base) + float(gamma) * float(flatness) / float(sigma_1)


def angle_between(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle in radians, in [0, pi], between two flat vectors: ``arccos(cos(a, b))``, computed in float64.

    Evaluated as ``2 * atan2(|u - v|, |u + v|)`` on the unit vectors ``u, v`` (Kahan), which equals
    ``arccos(clamp(cos))`` but stays exact near 0 and pi where ``arccos`` loses half the digits: identical
    vectors give exactly 0.
    """
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"angle_between needs two 1-D vectors of one length, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    a64, b64 = a.double(), b.double()
    na, nb = a64.norm(), b64.norm()
    if na == 0 or nb == 0:
        raise ValueError("angle_between: a zero vector has no direction")
    u, v = a64 / na, b64 / nb
    return float(2.0 * torch.atan2((u - v).norm(), (u + v).norm()))
