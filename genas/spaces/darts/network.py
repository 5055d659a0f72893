"""The standalone DARTS-space networks (NetworkImageNet / NetworkCIFAR) of a genotype: what a searched cell is
retrained as. They implement timm's model API (``forward_intermediates``, ``reset_classifier``, ...) with timm's
layer helpers; :mod:`backbones.darts_net` registers them as timm models (variants, pretrained cfgs).

Module and parameter names follow the reference DARTS ``model.py`` (``stem0``, ``stem1``, ``cells.N.preprocess0/1``,
``cells.N._ops.K``, ``auxiliary_head``, ``classifier``) so that published GeNAS / DARTS checkpoints load through
:func:`backbones.darts_net.checkpoint_filter_fn`.

Feature levels (``features_only=True``, ``out_indices`` 0..3; default all four) of the ImageNet network with
14 cells and reductions at cells 4 and 9, for detection / segmentation necks:

- 0: stride 4, ``stem0`` output (two stride-2 convs), C channels;
- 1: stride 8, ``cells.3`` output (last cell before the first reduction), 4C;
- 2: stride 16, ``cells.8`` output (last cell before the second reduction), 8C;
- 3: stride 32, ``cells.13`` output (last cell, what the classifier pools), 16C.

Every level is taken as the network computes it (BN outputs, no extra activation: the next cell starts with
ReLU). The CIFAR network has the same four levels at strides 1 / 1 / 2 / 4 (stem of 3C channels).

Drop-path follows the reference: one rate for every op output except identities, applied in training only;
``train_imagenet.py`` ramps ``model.drop_path_prob`` linearly over the epochs as the reference does.

Gradient checkpointing (timm's ``set_grad_checkpointing()``): each cell is run under
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` in ``forward`` / ``forward_features`` /
``forward_intermediates`` (so also under ``features_only``), keeping only the cells' inputs for the backward and
recomputing the rest. The result is the plain backward's: drop-path masks are redrawn from the same RNG state
(``preserve_rng_state``), and BatchNorm layers in training mode do *not* update their running statistics a second
time during the recomputation (a plain ``checkpoint`` of a module with training BN moves ``running_mean`` /
``running_var`` twice and counts ``num_batches_tracked`` twice; the recomputation here runs those layers with
momentum 0, normalising with the same batch statistics, and puts ``num_batches_tracked`` back).

The networks keep timm's model contract (timm's own ``tests/test_models.py`` passes for every registered
model; ``tests/test_timm_contract.py`` keeps the same checks): ``forward`` is TorchScript-able (ModuleLists are
iterated, never indexed by a variable) and FX-traceable (no Python control flow on traced values), every
parameter and buffer is created on the ``device`` / ``dtype`` asked for (``device='meta'`` included), and
``forward_features`` ends at the last feature level kept by ``prune_intermediate_layers``.
"""

from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from timm.layers import create_classifier, drop_path, get_device_dtype, register_notrace_module
from timm.models._features import feature_take_indices

from genas.spaces.darts.genotype import Genotype
from genas.spaces.darts.ops import OPS, FactorizedReduce, Identity
from genas.spaces.darts.published import parse_genotype
from genas.spaces.ops import ReLUConvBN

__all__ = ["Cell", "AuxiliaryHead", "NetworkImageNet", "NetworkCIFAR", "checkpoint_cell"]


class Cell(nn.Module):
    """One DARTS cell: two preprocessed inputs, four nodes of two ops each, output = concat of the nodes."""

    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool):
        super().__init__()
        # the cell after a reduction reads a twice-larger map through s0: halve it to match
        self.preprocess0 = (FactorizedReduce(C_prev_prev, C) if reduction_prev
                            else ReLUConvBN(C_prev_prev, C, 1, 1, 0))
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        pairs = genotype.reduce if reduction else genotype.normal
        self._concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self._indices = [index for _, index in pairs]
        self.multiplier = len(self._concat)
        self._ops = nn.ModuleList(
            OPS[name](C, 2 if reduction and index < 2 else 1, True) for name, index in pairs)
        # which op outputs get drop-path (all but identities), as plain data: TorchScript and FX read it statically
        self._drop = [not isinstance(op, Identity) for op in self._ops]

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states: List[torch.Tensor] = [self.preprocess0(s0), self.preprocess1(s1)]
        first = states[0]  # the node's first op output (typed placeholder for TorchScript)
        # ops 2k and 2k+1 feed node k; iterate the ModuleList (TorchScript cannot index it with a variable)
        for k, op in enumerate(self._ops):
            h = op(states[self._indices[k]])
            if self._drop[k]:
                h = drop_path(h, drop_prob, self.training)
            if k % 2 == 0:
                first = h
            else:
                states.append(first + h)
        return torch.cat([states[i] for i in self._concat], dim=1)


@contextmanager
def _running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``module`` in training mode normalise with the batch statistics as usual but leave their
    running statistics and ``num_batches_tracked`` as they were: what a checkpoint's recomputation must do, since
    the first forward already updated them.

    The layers run with ``momentum = 0`` (the running averages are rewritten as ``1 * running + 0 * batch``, the
    same values) and ``num_batches_tracked`` is put back afterwards. Turning ``track_running_stats`` off instead
    would not do: batch norm then saves two tensors fewer for the backward, which the checkpoint rejects.
    """
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _recompute_contexts(module: nn.Module) -> Tuple[Any, Any]:
    return nullcontext(), _running_stats_frozen(module)


def checkpoint_cell(cell: nn.Module, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """``cell(s0, s1, drop_prob)`` under activation checkpointing, with the plain call's result, gradients, RNG
    stream and BatchNorm running statistics (see the module docstring)."""
    return torch.utils.checkpoint.checkpoint(cell, s0, s1, drop_prob, use_reentrant=False,
                                             context_fn=partial(_recompute_contexts, cell))


@register_notrace_module  # a size test on the input: an FX leaf, so traced training graphs keep it
class _AuxPool(nn.AvgPool2d):
    """The auxiliary head's average pool, skipped when the map is smaller than its window.

    At the reference input (224 px the head sees 7x7) this is the reference pool; on small inputs (e.g. 64 px
    smoke tests, 2x2 maps) it is skipped so training with the auxiliary loss runs at any input size >= 64.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.kernel_size:
            return x
        return super().forward(x)


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier on the output of the second reduction cell (reference layout ``features.*``).

    The reference ImageNet head has no BN after its 768-channel conv (a typo kept for its published weights);
    the CIFAR head has one. A global average before the linear layer makes other input sizes work; at the
    reference sizes the map is already 1x1 there.
    """

    def __init__(self, C: int, num_classes: int, pool_stride: int, final_bn: bool):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReLU(inplace=False),  # its input is also the next cells' input
            _AuxPool(5, stride=pool_stride, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
        ]
        if final_bn:
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


class _DartsNetwork(nn.Module):
    """Cells, head and the timm API shared by the ImageNet and CIFAR networks; subclasses add the stems."""

    aux_pool_stride: int
    aux_final_bn: bool

    def __init__(self, genotype: Any, C: int, layers: int, num_classes: int = 1000, in_chans: int = 3,
                 auxiliary: bool = False, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 global_pool: str = "avg", device: Any = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        # the ops are shared with the supernet and take no device/dtype: build them under the device, then cast
        with torch.device(device) if device is not None else nullcontext():
            self._build(parse_genotype(genotype), C, layers, num_classes, in_chans, auxiliary, drop_rate,
                        drop_path_rate, global_pool)
        if dtype is not None:
            self.to(dtype=dtype)

    def _build(self, genotype: Genotype, C: int, layers: int, num_classes: int, in_chans: int, auxiliary: bool,
               drop_rate: float, drop_path_rate: float, global_pool: str) -> None:
        if layers < 3:
            raise ValueError(f"a DARTS network needs at least 3 cells (two reductions), got layers={layers}")
        if C < 2 or C % 2:
            raise ValueError(f"the initial channel count C must be even and >= 2 (stems and FactorizedReduce "
                             f"halve it), got C={C}")
        self.genotype = genotype
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.drop_path_prob = float(drop_path_rate)
        #: timm's gradient checkpointing (``set_grad_checkpointing``): checkpoint each cell in the forwards
        self.grad_checkpointing = False
        self.reduction_cells = (layers // 3, 2 * layers // 3)
        self._aux_after = 2 * layers // 3

        stem_out = self.build_stems(in_chans, C)
        self.feature_info = [dict(num_chs=stem_out, reduction=self.stem_stride, module=self.stem_tap)]
        C_prev_prev, C_prev, C_curr = stem_out, stem_out, C
        reduction_prev = self.stem_reduces
        stride = self.stem_stride * (2 if reduction_prev else 1)
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in self.reduction_cells
            if reduction:
                C_curr *= 2
                stride *= 2
            cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self._aux_after:
                C_aux = C_prev
            if i + 1 in self.reduction_cells or i == layers - 1:
                self.feature_info.append(dict(num_chs=C_prev, reduction=stride, module=f"cells.{i}"))
        #: cell index whose output is each feature level (-1: the stem)
        self.feature_ends = [-1] + [int(f["module"].split(".")[1]) for f in self.feature_info[1:]]
        self.auxiliary_head = (AuxiliaryHead(C_aux, num_classes, self.aux_pool_stride, self.aux_final_bn)
                               if auxiliary and num_classes > 0 else None)
        self.num_features = self.head_hidden_size = C_prev
        self.global_pool, self.head_drop, self.classifier = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)

    # ---- stems (subclasses) ----
    stem_tap: str  # module name of feature level 0
    stem_stride: int  # its stride
    stem_reduces: bool  # whether the stem's last part halves s1 again (so cell 0 reduces s0 to match)

    def build_stems(self, in_chans: int, C: int) -> int:
        """Create the stem modules; return the channels of ``s0`` / ``s1``."""
        raise NotImplementedError

    def forward_stem(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(s0, s1)``: the two inputs of the first cell; ``s0`` is feature level 0."""
        raise NotImplementedError

    # ---- timm API ----
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^cells\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint every cell (timm's API): activation memory of the cells drops to their inputs, at the cost of
        one more forward of each cell in the backward; results and gradients are those of the plain forward."""
        if not isinstance(enable, bool):
            raise TypeError(f"set_grad_checkpointing(enable) takes True or False, got {enable!r}")
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifier (and auxiliary classifier, dropped when ``num_classes == 0``)."""
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.head_drop, self.classifier = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=self.drop_rate, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        new_modules = [self.global_pool, self.head_drop, self.classifier]
        if self.auxiliary_head is not None:
            if num_classes > 0:  # only the last Linear is new: frozen aux convs stay frozen
                self.auxiliary_head.classifier = nn.Linear(self.auxiliary_head.classifier.in_features, num_classes,
                                                           **dd)
                new_modules.append(self.auxiliary_head.classifier)
            else:
                self.auxiliary_head = None
        for module in new_modules:
            module.train(self.training)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Final features and the feature levels ``indices`` (see the module docstring for the levels).

        ``norm`` is accepted for the timm API and unused (no final norm layer).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        s0, s1 = self.forward_stem(x)
        if 0 in take_indices:
            intermediates.append(s0)
        num_cells = self.feature_ends[max_index] + 1 if stop_early else len(self.cells)
        taps = {end: level for level, end in enumerate(self.feature_ends) if level in take_indices}
        for i, cell in enumerate(self.cells):
            if i >= num_cells:
                break
            if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
                s0, s1 = s1, checkpoint_cell(cell, s0, s1, self.drop_path_prob)
            else:
                s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i in taps:
                intermediates.append(s1)
        if intermediates_only:
            return intermediates
        return s1, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the cells after the last kept level (and the head when asked or when cells were dropped)."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        num_cells = self.feature_ends[max_index] + 1
        if num_cells < len(self.cells):
            self.cells = self.cells[:num_cells]
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_head = True
        if num_cells == 0:
            self.prune_stem()
        if prune_head:
            self.auxiliary_head = None
            self.reset_classifier(0, "")
        return take_indices

    def prune_stem(self) -> None:
        """Make ``forward_features`` end at feature level 0 once every cell is pruned (the stem's tap)."""

    def _forward_cells(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        s0, s1 = self.forward_stem(x)
        aux: Optional[torch.Tensor] = None
        for i, cell in enumerate(self.cells):
            if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
                s0, s1 = s1, checkpoint_cell(cell, s0, s1, self.drop_path_prob)
            else:
                s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            # Python values only (module attribute, mode, loop index): static under TorchScript and FX
            if self.auxiliary_head is not None and self.training and i == self._aux_after:
                aux = self.auxiliary_head(s1)
        return s1, aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        s0, s1 = self.forward_stem(x)
        for cell in self.cells:
            if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
                s0, s1 = s1, checkpoint_cell(cell, s0, s1, self.drop_path_prob)
            else:
                s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
        return s1

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        """Logits; in training with an auxiliary head ``(logits, aux_logits)`` (timm's and torchvision's Inception
        convention). ``return_aux=True`` always gives the pair, ``aux_logits`` being ``None`` outside training or
        without an auxiliary head, for training loops that want one shape (the flag passes through DDP).

        A scripted model returns the logits only. Under FX tracing ``return_aux`` is a placeholder, not a bool,
        so it is tested by identity (``is True``) and never used as a traced condition.
        """
        features, aux = self._forward_cells(x)
        logits = self.forward_head(features)
        if not torch.jit.is_scripting():
            if return_aux is True or aux is not None:
                return logits, aux
        return logits


class NetworkImageNet(_DartsNetwork):
    """The DARTS ImageNet network: a stride-8 stem, ``layers`` cells (14 in the reference), reductions at 1/3
    and 2/3 of the depth."""

    aux_pool_stride = 2
    aux_final_bn = False
    stem_tap = "stem0"
    stem_stride = 4
    stem_reduces = True

    def build_stems(self, in_chans: int, C: int) -> int:
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_chans, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        # not in-place: s0 (feature level 0) stays the stem0 output
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        return C

    def forward_stem(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)

    def prune_stem(self) -> None:
        self.stem1 = nn.Identity()  # level 0 is stem0's output; stem1 only fed the (pruned) cells


class NetworkCIFAR(_DartsNetwork):
    """The DARTS CIFAR network: a stride-1 stem of ``3C`` channels, ``layers`` cells (reference: C=36, 20 cells)."""

    aux_pool_stride = 3
    aux_final_bn = True
    stem_tap = "stem"
    stem_stride = 1
    stem_reduces = False

    def build_stems(self, in_chans: int, C: int) -> int:
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 3 * C, 3, padding=1, bias=False), nn.BatchNorm2d(3 * C))
        return 3 * C

    def forward_stem(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)
        return s, s
