"""backbones.freeze: the one freezing rule (everything a timm feature level depends on) and the two conventions
mapped onto it, Detectron2's FREEZE_AT (ResNet meaning) and MMSeg's frozen_stages.

Expected sets by hand: the DARTS ImageNet network's levels are stem0 (stride 4), cell 3 (stride 8, after stem1 and
cells 0-3; cell 4 is the first reduction), cell 8 (stride 16) and cell 13 (stride 32); timm's ResNet-18 levels are
act1 (stride 2: conv1 + bn1, the stem) and layer1..layer4.
"""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import backbones  # noqa: F401
from backbones.freeze import (FreezeError, freeze_to_level, level_dependencies, level_module_name,
                              level_of_freeze_at, level_of_frozen_stages, level_strides)
from genas.core.errors import UsageError

DARTS_LEVEL_MODULES = [("stem0",), ("stem0", "stem1", *(f"cells.{i}" for i in range(4))),
                       ("stem0", "stem1", *(f"cells.{i}" for i in range(9))),
                       ("stem0", "stem1", *(f"cells.{i}" for i in range(14)))]


@pytest.fixture(scope="module")
def darts():
    torch.manual_seed(0)
    return timm.create_model("genas_c100", features_only=True, C=8)


def _under(model: nn.Module, prefixes: tuple[str, ...]) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.removeprefix("model.").startswith(tuple(f"{p}." for p in prefixes))}


@pytest.mark.parametrize("level", range(4))
def test_darts_levels_depend_on_the_stems_and_cells_before_them(darts, level):
    assert level_strides(darts) == [4, 8, 16, 32]
    part = level_dependencies(darts, level)
    assert set(part.parameters) == _under(darts, DARTS_LEVEL_MODULES[level])
    # every BatchNorm of those modules (the stems' and the cells' ops), none after
    norms = {n for n, m in darts.named_modules() if isinstance(m, nn.BatchNorm2d)
             and n.removeprefix("model.").startswith(tuple(f"{p}." for p in DARTS_LEVEL_MODULES[level]))}
    assert set(part.norms) == norms and norms
    # the probe ran in eval mode and changed nothing: training mode back, no statistics updated, nothing frozen
    assert darts.training and all(p.requires_grad for p in darts.parameters())
    assert all(int(m.num_batches_tracked) == 0 for m in darts.modules() if isinstance(m, nn.BatchNorm2d))


def test_freeze_to_level_keeps_exactly_that_part_fixed_in_a_training_step():
    torch.manual_seed(0)
    model = timm.create_model("genas_c100", features_only=True, C=8)
    part = freeze_to_level(model, 1)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(part.parameters) == _under(model, DARTS_LEVEL_MODULES[1])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(f.square().mean() for f in model(torch.randn(2, 3, 64, 64))).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and not changed & frozen
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    assert freeze_to_level(model, -1).parameters == ()
    # freezing again, deeper, on a model that already has frozen parameters: they count and stay frozen
    deeper = freeze_to_level(model, 2)
    assert set(deeper.parameters) == _under(model, DARTS_LEVEL_MODULES[2]) > frozen
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == set(deeper.parameters)


def test_pruned_levels_and_bad_levels_are_clear_errors():
    model = timm.create_model("genas_c100", features_only=True, C=8, out_indices=(1, 2))
    # the levels before the returned ones stay reachable (stem0 computes level 0), the pruned one does not
    assert set(level_dependencies(model, 0).parameters) == _under(model, ("stem0",))
    assert level_module_name(model, 2) == "model.cells.8"
    with pytest.raises(FreezeError, match=r"frozen_stages=3: feature level 3 \(module 'cells.13'\) is not built"):
        freeze_to_level(model, 3, setting="frozen_stages=3")
    with pytest.raises(FreezeError, match="feature level 4 does not exist; the model has levels 0..3"):
        level_dependencies(model, 4)
    assert issubclass(FreezeError, UsageError)


def test_freeze_at_has_resnet_meaning_on_timm_resnet18():
    """Detectron2's ResNet: 1 = stem (conv1, bn1), k = stem + res2..res<k>; timm's ResNet-18 the same way."""
    model = timm.create_model("resnet18", features_only=True)
    strides = level_strides(model)
    assert strides == [2, 4, 8, 16, 32]
    stages = ["layer1", "layer2", "layer3", "layer4"]
    for freeze_at in range(6):
        level = level_of_freeze_at(freeze_at, strides)
        names = set(level_dependencies(model, level).parameters)
        expected = set() if freeze_at == 0 else {"conv1.weight", "bn1.weight", "bn1.bias"} | {
            n for n, _ in model.named_parameters() if n.split(".")[0] in stages[:freeze_at - 1]}
        assert names == expected, freeze_at
    assert level_of_freeze_at(9, strides) == 4  # beyond the last stage: everything, as Detectron2's ResNet


def test_freeze_at_on_darts_strides():
    strides = [4, 8, 16, 32]  # the first level is the stem's output: 1 and 2 both freeze it
    assert [level_of_freeze_at(k, strides) for k in range(7)] == [-1, 0, 0, 1, 2, 3, 3]
    assert level_of_freeze_at(5, strides, built=2) == 2  # res5 not built: everything that is
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(FreezeError, match=r"MODEL.BACKBONE.FREEZE_AT=.*expected an int >= 0"):
            level_of_freeze_at(bad, strides)


def test_frozen_stages_mmseg_convention():
    assert [level_of_frozen_stages(k, 4) for k in (-1, 0, 1, 2, 3)] == [-1, 0, 1, 2, 3]
    for bad in (-2, 4, 1.0):
        with pytest.raises(FreezeError, match=r"frozen_stages=.*expected -1 \(nothing frozen\) or a feature level 0..3"):
            level_of_frozen_stages(bad, 4)
