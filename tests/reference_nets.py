"""Transcriptions of the reference code, written here from its published description, for the tests that
check our code against it: GeNAS's DARTS supernet (``train_supernet/super_model.py``, ``operations.py``),
RLNAS / AutoDL's NAS-Bench-201 SPOS supernet (``TinyNetworkSPOS``, ``NAS102SearchCell``, ``cell_operations``)
and GeNAS's scoring functions (``metrics/tester_wlm.py::get_cand_wlm``, ``metrics/tester_acc.py::get_cand_acc``).
None of our classes is imported: the tests compare two independent implementations.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from genas.spaces.darts.genotype import PRIMITIVES

# ----------------------------------------------------------------------------------------------------------
# A transcription of the reference DARTS supernet (GeNAS train_supernet/super_model.py, operations.py)
# ----------------------------------------------------------------------------------------------------------
class RefZero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x.mul(0.0) if self.stride == 1 else x[:, :, ::self.stride, ::self.stride].mul(0.0)


class RefFactorizedReduce(nn.Module):  # reference slicing x[:, :, 1:, 1:] (no padding)
    def __init__(self, c_in, c_out):
        super().__init__()
        self.relu = nn.ReLU()
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class RefSeq(nn.Module):
    def __init__(self, *layers):
        super().__init__()
        self.op = nn.Sequential(*layers)

    def forward(self, x):
        return self.op(x)


def ref_op(prim, C, stride):
    if prim == "none":
        return RefZero(stride)
    if prim == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride, 1), nn.BatchNorm2d(C))
    if prim == "avg_pool_3x3":
        return nn.Sequential(nn.AvgPool2d(3, stride, 1, count_include_pad=False), nn.BatchNorm2d(C))
    if prim == "skip_connect":
        return nn.Identity() if stride == 1 else RefFactorizedReduce(C, C)
    k = int(prim[-1])
    if prim.startswith("sep_conv"):
        return RefSeq(nn.ReLU(), nn.Conv2d(C, C, k, stride, k // 2, groups=C, bias=False), nn.Conv2d(C, C, 1, bias=False),
                       nn.BatchNorm2d(C), nn.ReLU(), nn.Conv2d(C, C, k, 1, k // 2, groups=C, bias=False),
                       nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C))
    return RefSeq(nn.ReLU(), nn.Conv2d(C, C, k, stride, 2 if k == 3 else 4, dilation=2, groups=C, bias=False),
                   nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C))


class RefMixedOp(nn.Module):
    def __init__(self, C, stride):
        super().__init__()
        self._ops = nn.ModuleList(ref_op(p, C, stride) for p in PRIMITIVES)

    def forward(self, x, idx):
        return self._ops[idx](x)


class RefCell(nn.Module):
    def __init__(self, cpp, cp, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = (RefFactorizedReduce(cpp, C) if reduction_prev else
                            RefSeq(nn.ReLU(), nn.Conv2d(cpp, C, 1, bias=False), nn.BatchNorm2d(C)))
        self.preprocess1 = RefSeq(nn.ReLU(), nn.Conv2d(cp, C, 1, bias=False), nn.BatchNorm2d(C))
        self._ops = nn.ModuleList(RefMixedOp(C, 2 if reduction and j < 2 else 1)
                                  for i in range(4) for j in range(2 + i))
        self._bns = nn.ModuleList()

    def forward(self, s0, s1, cand):
        states, offset = [self.preprocess0(s0), self.preprocess1(s1)], 0
        for i in range(4):  # every edge runs, a none edge adds zeros
            states.append(sum(self._ops[offset + j](h, cand[offset + j]) for j, h in enumerate(states)))
            offset += len(states) - 1
        return torch.cat(states[2:], dim=1)


class RefNetwork(nn.Module):
    def __init__(self, C, num_classes, layers):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 3 * C, 3, padding=1, bias=False), nn.BatchNorm2d(3 * C))
        cpp, cp, c, cells, red_prev = 3 * C, 3 * C, C, [], False
        for i in range(layers):
            red = i in (layers // 3, 2 * layers // 3)
            c = c * 2 if red else c
            cells.append(RefCell(cpp, cp, c, red, red_prev))
            red_prev, cpp, cp = red, cp, 4 * c
        self.cells = nn.ModuleList(cells)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cp, num_classes)

    def forward(self, x, normal, reduction):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduction if cell.reduction else normal)
        return self.classifier(self.global_pooling(s1).flatten(1))


# ----------------------------------------------------------------------------------------------------------
# A transcription of the RLNAS NAS-Bench-201 supernet (AutoDL TinyNetworkSPOS, mode "dynamic")
# ----------------------------------------------------------------------------------------------------------
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


class RefReLUConvBN(nn.Module):
    def __init__(self, c_in, c_out, k, stride, padding, affine):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, k, stride, padding, bias=False),
                                nn.BatchNorm2d(c_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class _RefNB201Zero(nn.Module):
    def forward(self, x):
        return x.mul(0.0)


class _RefPooling(nn.Module):
    def __init__(self):
        super().__init__()
        self.op = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x):
        return self.op(x)


def _nb201_op(name, C, affine):
    if name == "none":
        return _RefNB201Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "avg_pool_3x3":
        return _RefPooling()
    return RefReLUConvBN(C, C, 1 if name == "nor_conv_1x1" else 3, 1, 0 if name == "nor_conv_1x1" else 1, affine)


class RefResNetBlock(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv_a = RefReLUConvBN(c_in, c_out, 3, 2, 1, True)
        self.conv_b = RefReLUConvBN(c_out, c_out, 3, 1, 1, True)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2, 0), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x):
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class RefNB201Cell(nn.Module):
    def __init__(self, C, affine):
        super().__init__()
        self.edges = nn.ModuleDict()
        for i in range(1, 4):
            for j in range(i):
                self.edges[f"{i}<-{j}"] = nn.ModuleList(_nb201_op(name, C, affine) for name in NB201_OPS)

    def forward(self, x, arch):
        """``arch``: op index per edge in the order 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2 (AutoDL's edge order)."""
        nodes, gene = [x], iter(arch)
        for i in range(1, 4):
            nodes.append(sum(self.edges[f"{i}<-{j}"][next(gene)](nodes[j]) for j in range(i)))
        return nodes[-1]


class RefNB201Network(nn.Module):
    def __init__(self, C, N, num_classes, affine=False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        channels = [C] * N + [2 * C] + [2 * C] * N + [4 * C] + [4 * C] * N
        reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
        cells, c_prev = [], C
        for c, reduction in zip(channels, reductions):
            cells.append(RefResNetBlock(c_prev, c) if reduction else RefNB201Cell(c, affine))
            c_prev = c
        self.cells = nn.ModuleList(cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)
        self.arch_parameters = nn.Parameter(1e-3 * torch.randn(6, len(NB201_OPS)))  # registered last, listed first

    def forward(self, x, arch):
        feature = self.stem(x)
        for cell in self.cells:
            feature = cell(feature, arch) if isinstance(cell, RefNB201Cell) else cell(feature)
        return self.classifier(self.global_pooling(self.lastact(feature)).flatten(1))


# ----------------------------------------------------------------------------------------------------------
# The reference scoring functions (GeNAS evolution_search/metrics), on the global torch generator
# ----------------------------------------------------------------------------------------------------------
def _recalibrate_like_the_reference(model, args, train_loader, max_train_img_size):
    max_train_iters = math.ceil(max_train_img_size / train_loader.batch_size)
    train_iter = iter(train_loader)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean = torch.zeros_like(m.running_mean)
            m.running_var = torch.ones_like(m.running_var)
    model.train()
    for _ in range(max_train_iters):
        data, _target = next(train_iter)
        model(data, *args)


@torch.no_grad()
def reference_get_cand_wlm(model, args, train_loader, val_loader, stds, max_train_img_size, max_val_img_size):
    """(wlm, per-sigma losses) as get_cand_wlm computes them: BN reset to 0/1 and momentum re-tracking on the
    train loader, a deep copy perturbed cumulatively by torch.normal for every named parameter, per-batch mean
    losses summed as Python floats."""
    _recalibrate_like_the_reference(model, args, train_loader, max_train_img_size)
    max_test_iters = math.ceil(max_val_img_size / val_loader.batch_size)
    model.eval()
    model_ = copy.deepcopy(model)
    losses = []
    for std_idx, cur_std in enumerate(stds):
        val_iter = iter(val_loader)
        std = cur_std if std_idx == 0 else cur_std - stds[std_idx - 1]
        for _name, param in model_.named_parameters():
            param.data.add_(torch.normal(0, std, size=param.size()).type(param.dtype).to(param.device))
        model_.eval()
        total = 0.0
        for _ in range(max_test_iters):
            data, target = next(val_iter)
            total += F.cross_entropy(model_(data, *args), target).item()
        losses.append(total / max_test_iters)
    poor_minima = abs(losses[0] / stds[0])
    for i in range(len(losses) - 1):
        poor_minima += abs((losses[i + 1] - losses[i]) / (stds[i + 1] - stds[i]))
    return 1 / (poor_minima + 1e-5), losses


@torch.no_grad()
def reference_get_cand_acc(model, args, train_loader, val_loader, max_train_img_size, max_val_img_size):
    """Top-1 fraction as get_cand_acc computes it. It iterates both loaders before the BN batches; here the
    validation loader is iterated after them, which takes the same int64 draws from the stream in sequence."""
    _recalibrate_like_the_reference(model, args, train_loader, max_train_img_size)
    val_iter = iter(val_loader)
    max_test_iters = math.ceil(max_val_img_size / val_loader.batch_size)
    model.eval()
    top1, total = 0.0, 0
    for _ in range(max_test_iters):
        data, target = next(val_iter)
        pred = model(data, *args).topk(1, 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        top1 += (correct[:1].reshape(-1).float().sum(0) * (100.0 / target.size(0))).item() * target.size(0)
        total += target.size(0)
    return top1 / total / 100
