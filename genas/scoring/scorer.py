"""``ArchScorer``: the search score of one architecture under a chosen metric (paper Eq. 4, 5, 7; RLNAS angle).

Metrics (``score.metric``), higher is better:

=====================  =======================================================================
``accuracy``           top-1 fraction on the fixed validation batches after BN recalibration (PBS)
``angle``              angle(init path weights, final path weights) / pi (ABS, RLNAS)
``flatness``           F of Eq. 4 (alpha = 0: Eq. 3)
``angle+flatness``     angle / pi + gamma * F / sigma_1 (Eq. 5)
``accuracy+flatness``  accuracy + gamma * F / sigma_1 (Eq. 5)
``angle+accuracy``     angle / pi + gamma_acc * accuracy (both in [0, 1]; score.gamma_acc, default 1)
``naswot``             NASWOT log-det of the path's ReLU-code kernel (:mod:`genas.scoring.proxies`)
``synflow``            ln of the path's SynFlow (float64, absolute weights, BN as identity)
``naswot+flatness``    naswot / ref + gamma * F / sigma_1 (Eq. 5 with S = the normalised proxy)
``synflow+flatness``   ln(synflow) / ref + gamma * F / sigma_1
=====================  =======================================================================

Proxy normalisation. Eq. 5 adds gamma * F / sigma_1 to an S of the scale of a fraction (accuracy in [0, 1],
angle / pi). A per-candidate min-max over the population is impossible (a candidate's score must not depend
on the others), so the proxy P (naswot, ln synflow) is divided by a fixed reference ``ref``: the mean P of
``PROXY_REFERENCE_ARCHS`` = 8 architectures drawn from the space with ``score.seed``, computed once per
scorer on the same supernet and batches. S = P / ref is then ~1 for a typical architecture of the space (as
accuracy is ~1 for a good one), a positive constant factor that keeps P's ranking, and gamma weighs flatness
against S as it does against accuracy. The metrics ``naswot`` / ``synflow`` alone are the raw P.

Angle vector (RLNAS convention). The path's weights (``supernet.path_parameter_names(arch)``: stem, cells,
reduction blocks, BN affine, classifier) are concatenated, followed by one constant per parameter-free op on
the path (``supernet.path_op_names(arch)``): a 3x3 pooling contributes a 3x3 kernel of 1/9 (9 entries) and a
``skip_connect`` an identity weight (one entry, 1.0); ``none`` and parametric ops add nothing. The constants
are the same in the init and the final vector. RLNAS repeats them per channel (C x 3 x 3 and eye(C)); the
Supernet interface gives no per-edge channel counts, so one channel's slice is used. The angle depends on the
constants only through their total squared norm (equal entries in both vectors), so each op weighs 1/C of
what it weighs in RLNAS, C being the channels of its edge.
A stride-2 DARTS ``skip_connect`` is a FactorizedReduce with weights: the DARTS supernet reports it as
``factorized_reduce``, so it adds its weights and no constant.

``score.angle_vector=reference`` uses instead the reference code's vector (the supernets'
``reference_angle_vector``: per-channel pooling and identity constants, shared edges repeated once per path,
GeNAS's dil_conv quirk, no DARTS classifier bias; NB201 conv weights only).

A non-finite perturbed loss gives the candidate the worst score (-inf) and ``finite: False``; the scorer
counts such candidates in :attr:`ArchScorer.num_nonfinite` and warns with the count, so a search never
crashes on one.
"""
from __future__ import annotations

import base64
import math
import time
import warnings
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from genas.core.config import DEFAULTS
from genas.core.distributed import amp_dtype
from genas.scoring.perturbation import (PerturbationConfig, fixed_batches, loader_iteration_draw, perturbed_losses,
                                       recalibrated_bn, top1_accuracy)
from genas.scoring.formulas import angle_between, combined_score, flatness_from_losses
from genas.scoring import proxies
from genas.scoring.reference_stream import reference_noise_layout
from genas.spaces.base import Arch, Supernet

__all__ = ["METRICS", "ArchScorer", "check_score_config", "combine_parts", "perturbation_config", "path_weight_vector"]

METRICS = ("accuracy", "angle", "flatness", "angle+flatness", "accuracy+flatness", "angle+accuracy",
           "naswot", "synflow", "naswot+flatness", "synflow+flatness")

# Architectures (drawn with score.seed) whose mean proxy normalises naswot / synflow in "<proxy>+flatness".
PROXY_REFERENCE_ARCHS = 8
# Result key of each proxy's raw value (synflow is kept as its natural log).
PROXY_COLUMNS = {"naswot": "naswot", "synflow": "log_synflow"}

ANGLE_VECTORS = ("compact", "reference")

# Constants of parameter-free ops in the angle vector (see the module docstring).
PARAMETER_FREE_CONSTANTS: dict[str, tuple[float, ...]] = {
    "avg_pool_3x3": (1.0 / 9.0,) * 9,
    "max_pool_3x3": (1.0 / 9.0,) * 9,
    "skip_connect": (1.0,),
}


def path_weight_vector(weights: Mapping[str, torch.Tensor], names: list[str], op_names: list[str]) -> torch.Tensor:
    """The RLNAS angle vector (float64, CPU) of a path: ``weights[name]`` for ``names`` in order, then the
    constants of the parameter-free ops in ``op_names``."""
    missing = [n for n in names if n not in weights]
    if missing:
        raise KeyError(f"the init state dict lacks {len(missing)} path parameter(s), e.g. {missing[:3]}; "
                       f"was it saved from the same supernet (space and width)?")
    parts = [weights[n].detach().reshape(-1).to("cpu", torch.float64) for n in names]
    constants = [c for op in op_names for c in PARAMETER_FREE_CONSTANTS.get(op, ())]
    parts.append(torch.tensor(constants, dtype=torch.float64))
    return torch.cat(parts)


def _score_config(score_cfg: Mapping[str, Any]) -> dict[str, Any]:
    known = DEFAULTS["score"]
    unknown = sorted(set(score_cfg) - set(known))
    if unknown:
        raise ValueError(f"unknown score option(s) {unknown}; known options: {sorted(known)}")
    cfg = {**known, **score_cfg}
    if cfg["metric"] not in METRICS:
        raise ValueError(f"score.metric must be one of {METRICS}, got {cfg['metric']!r}")
    amp_dtype(cfg["amp"], "score.amp")
    if cfg["amp"] is not None and cfg["amp"] != "null" and not cfg["amp_allow_rank_change"]:
        raise ValueError(f"score.amp={cfg['amp']} changes the ranking (measured on CPU: Kendall tau 0.94 between the "
                         f"fp32 and bf16 rankings of 12 NB201 architectures) and was slower than fp32 on an H200 "
                         f"(1.28 vs 1.14 s per candidate): set score.amp_allow_rank_change=true to use it anyway, "
                         f"or score.amp=null")
    _check_reference_options(cfg)
    return cfg


def _check_reference_options(cfg: Mapping[str, Any]) -> None:
    """The options of the reference protocol (README "Reference protocol vs defaults")."""
    for key, allowed in (("bn_recal", ("exact", "reference")), ("angle_vector", ANGLE_VECTORS),
                         ("val_order", ("seeded", "file")), ("recal_order", ("seeded", "file"))):
        if cfg[key] not in allowed:
            raise ValueError(f"score.{key} must be one of {allowed}, got {cfg[key]!r}")
    if not (isinstance(cfg["gamma_acc"], (int, float)) and math.isfinite(cfg["gamma_acc"])):
        raise ValueError(f"score.gamma_acc must be a finite number, got {cfg['gamma_acc']!r}")
    acc = cfg["recalib_batches_acc"]
    if acc is not None and (isinstance(acc, bool) or not isinstance(acc, int) or acc < 1):
        raise ValueError(f"score.recalib_batches_acc must be null or an int >= 1, got {acc!r}")
    eps = cfg["flatness_eps"]
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"score.flatness_eps must be a number >= 0, got {eps!r}")


def perturbation_config(cfg: Mapping[str, Any]) -> PerturbationConfig:
    """The perturbation settings of a full score config (validated: sigmas, noise, positions, direction)."""
    return PerturbationConfig(
        sigmas=tuple(cfg["sigmas"]), noise=cfg["noise"],
        common_random_numbers=bool(cfg["common_random_numbers"]), positions=cfg["positions"],
        direction=cfg["direction"], seed=int(cfg["seed"]),
        noise_stream=cfg["noise_stream"], hessian_iters=int(cfg["hessian_iters"]),
        hessian_tol=float(cfg["hessian_tol"]), fresh_draws=bool(cfg["fresh_draws"]), loss_mean=cfg["loss_mean"])


def check_score_config(score_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Every check :class:`ArchScorer` makes on its config alone (no supernet, no data): what the search CLI
    runs before the first file is written or the first training step, so a bad ``score`` section fails in
    a second instead of after supernet training. ``ValueError`` naming the option."""
    cfg = _score_config(score_cfg)
    perturbation_config(cfg)
    return cfg


class ArchScorer:
    """Scores architectures of one trained supernet; ``scorer(arch)`` returns the result dict of the contract:
    ``score`` (higher is better), ``losses`` (L_1..L_t), ``flatness``, ``accuracy``, ``angle`` (radians),
    each None where the metric does not need it, ``finite`` and ``seconds``.

    The fixed recalibration / validation batches are built once here, so every candidate is evaluated on the
    same data and the result of an architecture does not depend on evaluation order. Scoring leaves every
    supernet tensor unchanged (BN statistics and perturbed weights are restored). ``init_state_dict``, the
    epoch-0 supernet weights, is required by the angle metrics.
    """

    def __init__(self, supernet: Supernet, score_cfg: Mapping[str, Any], train_data: Dataset | None,
                 val_data: Dataset | None, device: torch.device | str,
                 init_state_dict: Mapping[str, torch.Tensor] | None = None):
        self.cfg = _score_config(score_cfg)
        self.device = torch.device(device)
        self.supernet = supernet.to(self.device).eval()
        self.memory_format = torch.channels_last if self.cfg["channels_last"] else torch.contiguous_format
        if self.cfg["channels_last"]:
            self.supernet.to(memory_format=self.memory_format)  # same values, NHWC strides
        # score.recal_order=file: the BN batches are the training split's first images in file order, the same for
        # every candidate (the reference's unshuffled loader, iterated anew per candidate)
        self.recal_seeded = self.cfg["recal_order"] == "seeded"
        parts = self.cfg["metric"].split("+")
        self.uses_angle = "angle" in parts
        self.uses_accuracy = "accuracy" in parts
        self.uses_flatness = "flatness" in parts
        self.proxy = next((p for p in parts if p in proxies.PROXIES), None)  # naswot | synflow | None
        self.perturbation = perturbation_config(self.cfg)
        self.amp_dtype = amp_dtype(self.cfg["amp"], "score.amp")
        if self.uses_flatness and self.amp_dtype is not None:
            self._check_amp_resolution()
        if self.uses_angle and init_state_dict is None:
            raise ValueError(f"metric {self.cfg['metric']!r} needs the epoch-0 supernet weights: pass "
                             f"init_state_dict (the 'model' of <run>/supernet/init.pt)")
        self.init_state_dict = init_state_dict
        self.recalib_batches: list = []
        self.val_batches: list = []
        if self.uses_accuracy or self.uses_flatness or self.proxy:
            if train_data is None or val_data is None:
                raise ValueError(f"metric {self.cfg['metric']!r} needs train_data (BN recalibration) and "
                                 f"val_data (loss / accuracy)")
            seed = int(self.cfg["seed"])
            self.recalib_batches = fixed_batches(train_data, self.cfg["recalib_batches"],
                                                 int(self.cfg["batch_size_recalib"]), seed, self.device,
                                                 self.memory_format, shuffle=self.recal_seeded)
            self.val_batches = fixed_batches(val_data, self.cfg["eval_batches"], int(self.cfg["eval_batch_size"]),
                                             seed + 1, self.device, self.memory_format,
                                             shuffle=self.cfg["val_order"] == "seeded")
        # score.fresh_draws (reference): recalibration batches and noise come from streams seeded once that run
        # on across candidates, so a score depends on the evaluation order
        self.train_data = train_data
        self._batch_rng = np.random.default_rng(int(self.cfg["seed"]))
        self._noise_generator = torch.Generator().manual_seed(int(self.cfg["seed"]))
        self.acc_recalib_batches = None  # accuracy+flatness: the accuracy's own recalibration (reference: 15,000 images)
        if self.uses_accuracy and self.uses_flatness and self.cfg["recalib_batches_acc"] is not None:
            self.acc_recalib_batches = fixed_batches(train_data, self.cfg["recalib_batches_acc"],
                                                     int(self.cfg["batch_size_recalib"]), int(self.cfg["seed"]) + 2,
                                                     self.device, self.memory_format, shuffle=self.recal_seeded)
        if self.uses_angle and self.cfg["angle_vector"] == "reference" and not hasattr(supernet,
                                                                                     "reference_angle_vector"):
            raise ValueError(f"score.angle_vector=reference: the {supernet.space.name} supernet has no reference "
                             f"angle vector")
        self.noise_layout = (reference_noise_layout(self.supernet)
                             if self.uses_flatness and self.perturbation.noise_stream == "reference" else None)
        self.num_nonfinite = 0
        self.proxy_reference = self._proxy_reference() if self.proxy and self.uses_flatness else None

    def _check_amp_resolution(self) -> None:
        """Refuse autocast when sigma_1 is below the dtype's resolution at the weights' RMS: the perturbation
        would round away in the low-precision copy of the weights (1e-5 on a weight of 0.05 in bf16)."""
        with torch.no_grad():
            squares = sum(float(p.double().pow(2).sum()) for p in self.supernet.parameters())
            rms = math.sqrt(squares / sum(p.numel() for p in self.supernet.parameters()))
        resolution = torch.finfo(self.amp_dtype).eps * rms
        sigma_1 = self.perturbation.sigmas[0]
        if sigma_1 < resolution:
            raise ValueError(f"score.amp={self.cfg['amp']} cannot resolve sigma_1={sigma_1:g}: weights of RMS "
                             f"{rms:.3g} move in steps of ~{resolution:.3g} in {self.amp_dtype}; use score.amp=null")

    def angle(self, arch: Arch) -> float:
        """Angle (radians) between the path's weight vectors at epoch 0 and now (RLNAS convention).
        ``score.angle_vector=reference``: the reference code's vector (the supernet's ``reference_angle_vector``;
        0 where it is empty, as RLNAS NB201 scores an architecture whose every path has a ``none`` edge)."""
        if self.cfg["angle_vector"] == "reference":
            init = self.supernet.reference_angle_vector(self.init_state_dict, arch)
            if init is None:
                return 0.0
            return angle_between(init, self.supernet.reference_angle_vector(dict(self.supernet.named_parameters()),
                                                                            arch))
        names = self.supernet.path_parameter_names(arch, "all")
        op_names = self.supernet.path_op_names(arch)
        init = path_weight_vector(self.init_state_dict, names, op_names)
        final = path_weight_vector(dict(self.supernet.named_parameters()), names, op_names)
        return angle_between(init, final)

    def proxy_value(self, arch: Arch) -> float:
        """The raw training-free proxy of ``arch`` (:mod:`genas.scoring.proxies`) on the supernet path:
        ``naswot`` on the first validation batch, in eval mode with BN recalibrated as for ``accuracy`` (``score.bn_recal``);
        ``synflow`` with an all-ones input of the validation images' shape (BN is an identity there).
        ``synflow`` is reported as ``ln(synflow)`` (it spans orders of magnitude; -inf for a path that
        passes no signal), ``naswot`` as the log-determinant itself."""
        arch = self.supernet.space.validate(arch)
        x = self.val_batches[0][0]
        if self.proxy == "synflow":
            value = proxies.synflow(self.supernet, tuple(x.shape[1:]), arch,
                                    param_names=self.supernet.path_parameter_names(arch, "all"), device=self.device)
            return math.log(value) if value > 0 else -math.inf

        def forward(inp: torch.Tensor) -> torch.Tensor:
            return self.supernet(inp, arch)

        with recalibrated_bn(self.supernet, forward, self.recalib_batches, self.amp_dtype, self.cfg["bn_recal"]):
            return proxies.naswot(self.supernet, x, arch)

    def _proxy_reference(self) -> float:
        """The normaliser of the proxy in ``<proxy>+flatness``: the mean proxy value of
        :data:`PROXY_REFERENCE_ARCHS` architectures drawn from the space with ``score.seed`` (non-finite
        values left out), computed once on this supernet and these batches."""
        rng = np.random.default_rng(int(self.cfg["seed"]))
        values = [self.proxy_value(self.supernet.space.sample(rng)) for _ in range(PROXY_REFERENCE_ARCHS)]
        finite = [v for v in values if math.isfinite(v)]
        reference = sum(finite) / len(finite) if finite else math.nan
        if not (math.isfinite(reference) and reference > 0):
            raise ValueError(f"metric {self.cfg['metric']!r}: the mean {self.proxy} of {PROXY_REFERENCE_ARCHS} "
                             f"reference architectures is {reference!r}, not a positive number to normalise by; "
                             f"use metric {self.proxy!r} alone")
        return reference

    def normalised_proxy(self, value: float) -> float:
        """``value / reference`` (see the module docstring): the proxy on the scale of an accuracy fraction."""
        return value / self.proxy_reference

    def __call__(self, arch: Arch) -> dict[str, Any]:
        start = time.perf_counter()
        arch = self.supernet.space.validate(arch)
        result: dict[str, Any] = {"score": None, "losses": None, "flatness": None, "accuracy": None,
                                  "angle": None, "finite": True}
        if self.uses_angle:
            result["angle"] = self.angle(arch)
        # naswot+flatness: naswot is taken inside the flatness's own BN recalibration (one recalibration)
        naswot_in_block = self.proxy == "naswot" and self.uses_flatness
        if self.proxy and not naswot_in_block:
            result[PROXY_COLUMNS[self.proxy]] = self.proxy_value(arch)
        if self.uses_accuracy or self.uses_flatness:
            def forward(x: torch.Tensor) -> torch.Tensor:
                return self.supernet(x, arch)

            mode = self.cfg["bn_recal"]
            generator = self._noise_generator if self.perturbation.fresh_draws else None
            if self.noise_layout is not None:
                for _ in range(self._reference_loader_draws()):
                    loader_iteration_draw(generator)
            if self.acc_recalib_batches is not None:
                with recalibrated_bn(self.supernet, forward, self._recalibration(self.acc_recalib_batches),
                                     self.amp_dtype, mode):
                    result["accuracy"] = top1_accuracy(forward, self.val_batches, self.amp_dtype)
            with recalibrated_bn(self.supernet, forward, self._recalibration(self.recalib_batches), self.amp_dtype,
                                 mode):
                if naswot_in_block:
                    result["naswot"] = proxies.naswot(self.supernet, self.val_batches[0][0], arch)
                if self.uses_accuracy and self.acc_recalib_batches is None:
                    result["accuracy"] = top1_accuracy(forward, self.val_batches, self.amp_dtype)
                if self.uses_flatness:
                    result["losses"] = perturbed_losses(self.supernet, arch, self.val_batches, self.perturbation,
                                                        self.amp_dtype, generator, self.noise_layout)
        result["seconds"] = time.perf_counter() - start
        if result["losses"] is not None and not all(math.isfinite(v) for v in result["losses"]):
            self.num_nonfinite += 1
            warnings.warn(f"non-finite perturbed loss for {self.supernet.space.to_string(arch)} "
                          f"(losses {result['losses']}): worst score; {self.num_nonfinite} such candidate(s) so far",
                          RuntimeWarning, stacklevel=2)
            result.update(score=-math.inf, finite=False)
            return result
        result["score"] = self._combine(result)
        return result

    def _reference_loader_draws(self) -> int:
        """Draws the reference's data loaders take from its global stream before a candidate's first noise
        (torch 1.7.1, the official environment): each ``iter(loader)`` draws one int64 (its workers' base seed)
        and a shuffled loader's ``RandomSampler`` one more (its permutation's seed). get_cand_acc (in
        accuracy+flatness, first) iterates the train and validation loaders, get_cand_wlm the train loader; the
        train loader is shuffled unless ``score.recal_order=file``. The validation loader's draw before each
        sigma is taken in :func:`perturbed_losses`."""
        train = 1 + (1 if self.recal_seeded else 0)
        return (train + 1 + train) if self.uses_accuracy else train

    def stream_state(self) -> dict[str, Any] | None:
        """The state of the running streams of ``score.fresh_draws`` (the BN-batch numpy generator and the noise
        generator), JSON-able, or None when scores do not depend on evaluation order. A resumed search
        restores it (:meth:`load_stream_state`) so that its scores equal the uninterrupted run's."""
        if not self.perturbation.fresh_draws:
            return None
        noise = self._noise_generator.get_state().numpy().tobytes()
        return {"batch_rng": self._batch_rng.bit_generator.state, "noise": base64.b64encode(noise).decode("ascii")}

    def load_stream_state(self, state: Mapping[str, Any] | None) -> None:
        """Continue the running streams from :meth:`stream_state`'s ``state`` (None: nothing to restore)."""
        if state is None or not self.perturbation.fresh_draws:
            return
        self._batch_rng.bit_generator.state = state["batch_rng"]
        noise = np.frombuffer(base64.b64decode(state["noise"]), dtype=np.uint8).copy()
        self._noise_generator.set_state(torch.from_numpy(noise))

    def _recalibration(self, fixed: list) -> list:
        """The BN batches of one candidate: ``fixed`` (default), or with ``score.fresh_draws`` as many new
        batches drawn from the scorer's running stream (new images and random crops for each candidate)."""
        if not self.perturbation.fresh_draws or not self.recal_seeded:
            return fixed
        return fixed_batches(self.train_data, len(fixed), int(self.cfg["batch_size_recalib"]), self._batch_rng,
                             self.device, self.memory_format)

    def _combine(self, result: dict[str, Any]) -> float:
        score, flatness = combine_parts(self.cfg["metric"], result, self.cfg, self.proxy_reference)
        if self.uses_flatness:
            result["flatness"] = flatness
        return score


def combine_parts(metric: str, parts: Mapping[str, Any], cfg: Mapping[str, Any],
                  proxy_reference: float | None = None) -> tuple[float, float | None]:
    """``(score, flatness)`` of one architecture under ``metric`` from its measured parts: ``angle`` (radians),
    ``accuracy``, ``naswot`` / ``log_synflow`` and ``losses`` (L_1..L_t), each as the metric needs it.
    ``cfg`` is a score config (``sigmas``, ``alpha``, ``gamma``, ``gamma_acc``, ``flatness_eps``);
    ``proxy_reference`` is the normaliser of the proxy in ``<proxy>+flatness``. The one place the score is
    combined: :class:`ArchScorer` and the ablation (genas/ablation.py) both call it. Non-finite losses give
    ``(-inf, None)``."""
    names = metric.split("+")
    if metric not in METRICS:
        raise ValueError(f"score.metric must be one of {METRICS}, got {metric!r}")
    uses_angle, uses_accuracy, uses_flatness = "angle" in names, "accuracy" in names, "flatness" in names
    proxy = next((p for p in names if p in PROXY_COLUMNS), None)
    base = 0.0
    if uses_angle:
        base += parts["angle"] / math.pi
    if uses_accuracy:
        # angle+accuracy weighs accuracy by score.gamma_acc (paper Table 10); elsewhere it weighs 1
        base += (float(cfg["gamma_acc"]) if uses_angle else 1.0) * parts["accuracy"]
    if proxy:
        value = parts[PROXY_COLUMNS[proxy]]
        base += value / proxy_reference if uses_flatness else value
    if not uses_flatness:
        return base, None
    losses = parts["losses"]
    if not all(math.isfinite(v) for v in losses):
        return -math.inf, None
    sigmas = tuple(float(s) for s in cfg["sigmas"])
    flatness = flatness_from_losses(losses, sigmas, float(cfg["alpha"]), float(cfg["flatness_eps"]))
    if uses_angle or uses_accuracy or proxy:
        return combined_score(base, flatness, float(cfg["gamma"]), sigmas[0]), flatness
    return flatness, flatness
