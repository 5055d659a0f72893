"""DARTS-space timm models: registration, sizes against the paper, forward/backward, features_only, the
timm head API, drop-path, checkpoint loading through the filter and genotype errors."""
from __future__ import annotations

import json

import pytest
import timm
import torch

import backbones  # noqa: F401  (registers the models)
from backbones.darts_net import VARIANTS, checkpoint_filter_fn
from genas.spaces.darts.network import Cell
from genas.cost import count_macs
from backbones.summary import main as summary_main
from genas.cost import count_params
from genas.spaces.darts.published import DARTS_V2, GENAS_FLATNESS_CIFAR100
from genas.spaces.darts import DartsSpace, Genotype, encode, format_genotype, genotype_to_json

GENERIC = ("darts_imagenet", "darts_cifar")

# Measured here (1000 classes, no auxiliary head), next to the paper's ImageNet sizes (Table 3).
PARAMS = {
    "genas_c100": 5_195_205, "genas_c10": 5_564_090, "genas_af_c100": 5_413_696, "genas_af_c10": 5_344_118,
    "rlnas_angle_c100": 5_425_481, "darts_v2": 4_718_752, "pc_darts": 5_270_560, "pc_darts_imagenet": 5_342_464,
    "p_darts": 4_944_352, "dropnas": 5_134_761, "rlnas": 5_257_581, "sdarts_rs": 5_511_675, "sdarts_adv": 5_506_578,
}
# GeNAS targets (issue / facts section 5): params (M) and conv+linear multiply-adds (M) at 224x224.
GENAS_TARGETS = {"genas_c100": (5.20, 580), "genas_af_c100": (5.41, 603), "genas_c10": (5.56, 611),
                 "genas_af_c10": (5.34, 594)}
GENAS_MACS = {"genas_c100": 579_473_040, "genas_af_c100": 602_400_192, "genas_c10": 610_058_800,
              "genas_af_c10": 592_905_456}



def _small(name: str, **kwargs) -> torch.nn.Module:
    """A registered model at width C=8 (same cells and wiring, fast on CPU)."""
    if name in GENERIC:
        kwargs.setdefault("genotype", GENAS_FLATNESS_CIFAR100)
    return timm.create_model(name, C=8, **kwargs)


def test_registry_lists_every_model():
    assert timm.list_models("genas*") == ["genas_af_c10", "genas_af_c100", "genas_c10", "genas_c100"]
    registered = set(timm.list_models())
    assert set(VARIANTS) | set(GENERIC) <= registered


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_param_counts_match_paper(name):
    model = timm.create_model(name)
    n = count_params(model)
    assert n == PARAMS[name]
    paper = VARIANTS[name].paper_params_m
    assert abs(n / 1e6 - paper) / paper < 0.02, (name, n, paper)
    if name in GENAS_TARGETS:
        assert abs(n / 1e6 - GENAS_TARGETS[name][0]) / GENAS_TARGETS[name][0] < 0.02


@pytest.mark.parametrize("name", sorted(GENAS_TARGETS))
def test_genas_macs_at_224(name):
    macs = count_macs(timm.create_model(name), (3, 224, 224))
    assert macs == GENAS_MACS[name]
    target = GENAS_TARGETS[name][1] * 1e6
    assert abs(macs - target) / target < 0.02


def test_darts_v2_cifar_size_matches_reference():
    # the reference DARTS train.py logs "param size = 3.349342MB" for DARTS_V2 (C=36, 20 cells, no aux head)
    assert count_params(timm.create_model("darts_cifar", genotype=DARTS_V2)) == 3_349_342


def test_pretrained_cfg_follows_reference_preprocessing():
    cfg = timm.create_model("genas_c100", C=8).pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
    assert cfg["interpolation"] == "bilinear"
    assert cfg["mean"] == (0.0, 0.0, 0.0) and cfg["std"] == (1.0, 1.0, 1.0)
    assert cfg["first_conv"] == "stem0.0" and cfg["classifier"] == "classifier"
    assert "url" not in cfg and "hf_hub_id" not in cfg


@pytest.mark.parametrize("name", sorted(VARIANTS) + list(GENERIC))
def test_forward_backward_every_model(name):
    torch.manual_seed(0)
    cifar = name == "darts_cifar"
    model = _small(name, num_classes=7, auxiliary=True, drop_path_rate=0.2, **(dict(layers=8) if cifar else {}))
    size = 32 if cifar else 64
    model.train()
    logits, aux = model(torch.rand(2, 3, size, size), return_aux=True)
    assert logits.shape == aux.shape == (2, 7)
    (logits.sum() + 0.4 * aux.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    out = model(torch.rand(1, 3, size, size))
    assert out.shape == (1, 7) and torch.isfinite(out).all()


def test_features_only_matches_feature_info():
    model = _small("genas_c100", features_only=True).eval()
    assert model.feature_info.channels() == [8, 32, 64, 128]  # C, 4C, 8C, 16C
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.module_name() == ["stem0", "cells.3", "cells.8", "cells.13"]
    x = torch.rand(2, 3, 64, 64)
    feats = model(x)
    assert [tuple(f.shape) for f in feats] == [(2, c, 64 // r, 64 // r) for c, r in
                                              zip(model.feature_info.channels(), model.feature_info.reduction())]


def test_features_are_the_network_intermediates_and_pruning():
    torch.manual_seed(0)
    full = _small("genas_c100").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = full.forward_intermediates(x)
        assert torch.equal(final, full.forward_features(x))
        # level 1 = output of cell 3 computed by hand from the stems and the first four cells
        s0 = full.stem0(x)
        s1 = full.stem1(s0)
        for cell in full.cells[:4]:
            s0, s1 = s1, cell(s0, s1)
        assert torch.allclose(inter[1], s1) and torch.equal(inter[0], full.stem0(x))
    pruned = _small("genas_c100", features_only=True, out_indices=(1,))
    pruned.model.load_state_dict(full.state_dict(), strict=False)
    assert len(pruned.model.cells) == 4 and pruned.model.auxiliary_head is None
    assert pruned.feature_info.channels() == [32] and pruned.feature_info.reduction() == [8]
    with torch.no_grad():
        assert torch.allclose(pruned.eval()(x)[0], inter[1])


def test_head_api():
    model = _small("genas_c100", num_classes=5, auxiliary=True).eval()
    x = torch.rand(2, 3, 64, 64)
    assert model.get_classifier() is model.classifier
    assert model.num_features == model.head_hidden_size == 128
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 128)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.auxiliary_head.classifier.out_features == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, 128) and model.auxiliary_head is None
    gray = _small("genas_c100", in_chans=1)
    assert gray.stem0[0].in_channels == 1 and gray.eval()(torch.rand(1, 1, 64, 64)).shape == (1, 1000)


def _cell(pairs):
    g = Genotype(normal=pairs, normal_concat=[2, 3, 4, 5], reduce=pairs, reduce_concat=[2, 3, 4, 5])
    return Cell(g, 8, 8, 8, reduction=False, reduction_prev=False).train()


def test_drop_path_skips_identities_and_drops_other_ops():
    torch.manual_seed(0)
    s0, s1 = torch.rand(4, 8, 6, 6), torch.rand(4, 8, 6, 6)
    skips = _cell([("skip_connect", 0), ("skip_connect", 1)] * 4)
    assert torch.equal(skips(s0, s1, drop_prob=0.9), skips(s0, s1, drop_prob=0.0))
    convs = _cell([("sep_conv_3x3", 0), ("sep_conv_3x3", 1)] * 4)
    torch.manual_seed(1)
    dropped = convs(s0, s1, drop_prob=0.5)
    kept = convs(s0, s1, drop_prob=0.0)
    assert not torch.allclose(dropped, kept)
    convs.eval()  # drop-path is a training-time regulariser only
    assert torch.equal(convs(s0, s1, drop_prob=0.5), convs(s0, s1, drop_prob=0.0))


def test_drop_path_rate_reaches_the_cells():
    model = _small("genas_c100", drop_path_rate=0.3)
    assert model.drop_path_prob == 0.3
    torch.manual_seed(0)
    x = torch.rand(4, 3, 64, 64)
    model.train()
    a = model(x)
    model.drop_path_prob = 0.0
    torch.manual_seed(0)
    assert not torch.allclose(a, model(x))


def _reference_checkpoint(model: torch.nn.Module) -> dict:
    """How the reference saves: DataParallel/DDP keys under 'state_dict', plus bookkeeping."""
    return {"epoch": 250, "best_acc_top1": 76.1,
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}


@pytest.mark.parametrize("wrapped", [True, False])
def test_checkpoint_roundtrip_through_timm(tmp_path, wrapped):
    torch.manual_seed(0)
    src = _small("genas_c100", auxiliary=True).eval()
    ckpt = _reference_checkpoint(src)
    path = tmp_path / "model_best.pth.tar"
    torch.save(ckpt if wrapped else ckpt["state_dict"], path)
    loaded = _small("genas_c100", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert loaded.auxiliary_head is None
    expected = {k: v for k, v in src.state_dict().items() if not k.startswith("auxiliary_head.")}
    state = loaded.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), src(x))
    # fine-tuning on 10 classes with an auxiliary head: everything but the two classifiers is loaded
    ft = _small("genas_c100", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=10,
                auxiliary=True)
    assert torch.equal(ft.auxiliary_head.features[2].weight, src.auxiliary_head.features[2].weight)
    assert ft.classifier.out_features == ft.auxiliary_head.classifier.out_features == 10


def test_checkpoint_filter_fn_directly():
    src = _small("genas_c100", auxiliary=True)
    target = _small("genas_c100")
    out = checkpoint_filter_fn(_reference_checkpoint(src), target)
    assert set(out) == set(target.state_dict())
    with_aux = _small("genas_c100", auxiliary=True)
    assert set(checkpoint_filter_fn(_reference_checkpoint(src), with_aux)) == set(with_aux.state_dict())


def test_generic_entry_reads_every_genotype_form(tmp_path):
    g = GENAS_FLATNESS_CIFAR100
    search_json = tmp_path / "result.json"
    search_json.write_text(json.dumps(DartsSpace().to_json(encode(g))))
    expected = count_params(_small("genas_c100"))
    for form in (g, format_genotype(g), genotype_to_json(g), {"genotype": genotype_to_json(g)},
                 str(search_json), "genas_flatness_cifar100"):
        model = timm.create_model("darts_imagenet", genotype=form, C=8)
        assert model.genotype == g
        assert count_params(model) == expected


def test_generic_models_default_to_the_documented_cell():
    """timm's model tests create every model without arguments: the generic ones build DEFAULT_GENOTYPE."""
    from backbones.darts_net import DEFAULT_GENOTYPE
    assert DEFAULT_GENOTYPE == GENAS_FLATNESS_CIFAR100
    default, explicit = timm.create_model("darts_cifar", C=8, layers=5), timm.create_model(
        "darts_cifar", C=8, layers=5, genotype="genas_flatness_cifar100")
    assert default.genotype == explicit.genotype
    assert sum(p.numel() for p in default.parameters()) == sum(p.numel() for p in explicit.parameters())


def test_genotype_errors_are_clear():
    bad_op = genotype_to_json(GENAS_FLATNESS_CIFAR100)
    bad_op["normal"][3] = ["conv_9x9", 1]
    with pytest.raises(ValueError, match="unknown op 'conv_9x9'"):
        timm.create_model("darts_imagenet", genotype=bad_op, C=8)
    short = genotype_to_json(GENAS_FLATNESS_CIFAR100)
    short["reduce"] = short["reduce"][:7]
    with pytest.raises(ValueError, match="reduce.*8.*got 7"):
        timm.create_model("darts_imagenet", genotype=short, C=8)
    with pytest.raises(ValueError, match="even"):
        timm.create_model("genas_c100", C=7)


@pytest.mark.parametrize("size", [72, 88])
def test_odd_feature_map_sizes_run(size):
    # 9x9 / 11x11 maps at stride 8 reach a FactorizedReduce: it pads so both halves agree (the reference's
    # x[:, :, 1:, 1:] slicing gives 5x5 and 4x4 halves there and fails)
    out = _small("genas_c100").eval()(torch.rand(1, 3, size, size))
    assert out.shape == (1, 1000)


def test_summary_cli(tmp_path, capsys):
    out = tmp_path / "sizes.json"
    assert summary_main(["genas_c100", "--input-size", "64", "--json", str(out)]) == 0
    assert "genas_c100" in capsys.readouterr().out
    row = json.loads(out.read_text())["models"][0]
    assert row["params_m"] == PARAMS["genas_c100"] / 1e6 and row["C"] == 46
    assert 0 < row["macs_g"] < GENAS_MACS["genas_c100"] / 1e9 / 10  # (64/224)^2 ~ 1/12 of the 224 count
    with pytest.raises(SystemExit):
        summary_main(["resnet50"])
