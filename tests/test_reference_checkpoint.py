"""Reference-layout supernet checkpoints (GeNAS / RLNAS) load into our supernets, give the same logits, and
their angle vectors are the reference code's.

The reference networks (tests/reference_nets.py) are transcriptions, written from the published description of the
GeNAS DARTS supernet (module names and computation of ``super_model.Network``), not imports of our classes: the
layout JSON in ../shared/reference must load into them strictly, and the same weights must give our logits.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from genas.spaces import LayoutError, build_supernet, get_space, init_checkpoint_path, load_supernet
from genas.spaces.darts.genotype import PRIMITIVES
from genas.spaces.nb201.space import EDGES
from genas.spaces.nb201.ops import OP_NAMES

from conftest import SHARED_DATA  # noqa: E402
from reference_nets import RefNetwork  # noqa: E402

LAYOUT = SHARED_DATA.parent / "reference" / "reference_darts_supernet_layout.json"
needs_layout = pytest.mark.skipif(not LAYOUT.is_file(), reason=f"reference layout JSON not found at {LAYOUT} (it sits "
                                  f"in reference/ beside the shared data folder GENAS_SHARED_DATA names)")


def _random_state(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in layout:
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(250, dtype=torch.long)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        else:
            state[name] = torch.randn(shape, generator=g) * 0.3
    return state


def _layout(num_classes):
    return json.loads(LAYOUT.read_text())[f"C16_layers8_classes{num_classes}"]


# ----------------------------------------------------------------------------------------------------------
# DARTS: layout, logits, errors
# ----------------------------------------------------------------------------------------------------------
@needs_layout
@pytest.mark.parametrize("num_classes", [10, 100])
def test_reference_darts_checkpoint_has_one_home_per_tensor_and_same_logits(tmp_path, num_classes):
    layout = _layout(num_classes)
    assert layout[0] == ["stem.0.weight", [48, 3, 3, 3]] and len(layout) == 6042
    state = _random_state(layout)
    path = tmp_path / "checkpoint_epoch_250.pth.tar"
    torch.save({"epoch": 250, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    ours = load_supernet(path, "darts", num_classes, C=16, layers=8, pool_bn=True)
    # exactly one home: the renaming is a bijection onto our state dict and every value arrived unchanged
    converted = ours.convert_reference_state_dict(state)
    assert len(converted) == len(state) == len(ours.state_dict()) == 6042
    own = ours.state_dict()
    for ref_name, tensor in state.items():
        matches = [n for n, t in converted.items() if t is tensor]
        assert len(matches) == 1, ref_name
        assert torch.equal(own[matches[0]], tensor), ref_name
    # the reference network (strict load also checks the layout JSON is that network) gives our logits
    reference = RefNetwork(16, num_classes, 8)
    reference.load_state_dict(state, strict=True)
    reference.eval(), ours.eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    rng = np.random.default_rng(0)
    archs = [get_space("darts").sample(rng) for _ in range(2)]
    archs.append(tuple([1, 2, 0, 3, 4, 0, 0, 5, 6, 0, 0, 0, 7, 3] * 2))  # every op type, both cells
    with torch.no_grad():
        for arch in archs:
            expected = reference(x, list(arch[:14]), list(arch[14:]))
            got = ours(x, arch)
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), arch


@needs_layout
def test_reference_checkpoint_that_does_not_fit_names_the_first_keys(tmp_path):
    state = _random_state(_layout(10))
    path = tmp_path / "checkpoint_epoch_250.pth.tar"
    torch.save({"epoch": 250, "state_dict": state, "optimizer": {}}, path)
    with pytest.raises(LayoutError, match=r"unexpected key\(s\), first: cells\.0\.edges\.0\.max_pool_3x3\.1\.weight"
                                          r".*set supernet\.pool_bn=true"):
        load_supernet(path, "darts", 10, C=16, layers=8, pool_bn=False)
    del state["stem.0.weight"]
    torch.save({"epoch": 250, "state_dict": state, "optimizer": {}}, path)
    with pytest.raises(LayoutError, match=r"1 missing key\(s\), first: stem\.0\.weight"):
        load_supernet(path, "darts", 10, C=16, layers=8, pool_bn=True)
    with pytest.raises(LayoutError, match=r"another shape .* classifier\.weight \(10, 256\) vs \(100, 256\)"):
        torch.save({"epoch": 250, "state_dict": _random_state(_layout(10)), "optimizer": {}}, path)
        load_supernet(path, "darts", 100, C=16, layers=8, pool_bn=True)


def test_our_checkpoints_load_with_their_own_options(tmp_path):
    model = build_supernet("nb201", 10, C=4, N=1, affine=False)
    path = tmp_path / "final.pt"
    torch.save({"model": model.state_dict(), "space": "nb201", "supernet": {"C": 4, "N": 1, "affine": False},
                "num_classes": 10}, path)
    loaded = load_supernet(path, "nb201", 10, C=16, N=5)  # the file's options win
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert loaded.affine is False and loaded.C == 4
    with pytest.raises(LayoutError, match="is a nb201 supernet but the config searches darts"):
        load_supernet(path, "darts", 10)
    with pytest.raises(LayoutError, match="classifies 10 classes but the data has 100"):
        load_supernet(path, "nb201", 100)
    assert init_checkpoint_path(path) == tmp_path / "init.pt"
    assert init_checkpoint_path(tmp_path / "checkpoint_epoch_250.pth.tar") == tmp_path / "checkpoint_epoch_0.pth.tar"
    assert init_checkpoint_path(tmp_path / "seed-0_epoch_250.pth") == tmp_path / "seed-0_epoch_0.pth"


# ----------------------------------------------------------------------------------------------------------
# Angle vectors: transcriptions of the reference code over reference-named state dicts
# ----------------------------------------------------------------------------------------------------------
_PATHS = [[0, 2, 3, 4, 5], [0, 2, 3, 5], [0, 2, 4, 5], [0, 2, 5], [0, 3, 4, 5], [0, 3, 5], [0, 4, 5], [0, 5],
          [1, 2, 3, 4, 5], [1, 2, 3, 5], [1, 2, 4, 5], [1, 2, 5], [1, 3, 4, 5], [1, 3, 5], [1, 4, 5], [1, 5],
          [0, 2, 3, 4], [0, 2, 4], [0, 3, 4], [0, 4], [1, 2, 3, 4], [1, 2, 4], [1, 3, 4], [1, 4],
          [0, 2, 3], [0, 3], [1, 2, 3], [1, 3], [0, 2], [1, 2]]


def _reference_darts_vector(sd, normal, reduction, layers):
    """GeNAS cand_evaluator.get_arch_vector, over reference key names."""
    f = lambda *names: torch.cat([sd[n].reshape(-1).double() for n in names])  # noqa: E731
    extra, arch_vector = [f("stem.0.weight", "stem.1.weight", "stem.1.bias")], []
    for i in range(layers):
        cand = reduction if i in (layers // 3, 2 * layers // 3) else normal
        p = f"cells.{i}"
        if f"{p}.preprocess0.conv_1.weight" in sd:
            extra.append(f(*(f"{p}.preprocess0.{n}" for n in ("conv_1.weight", "conv_2.weight", "bn.weight", "bn.bias"))))
        else:
            extra.append(f(*(f"{p}.preprocess0.{n}" for n in ("op.1.weight", "op.2.weight", "op.2.bias"))))
        extra.append(f(*(f"{p}.preprocess1.{n}" for n in ("op.1.weight", "op.2.weight", "op.2.bias"))))
        param_list = []
        for path in _PATHS:
            cell = []
            for k, j in zip(path, path[1:]):
                edge = k + {2: 0, 3: 2, 4: 5, 5: 9}[j]
                op, e = cand[edge], f"{p}._ops.{edge}._ops"
                C = sd[f"{e}.4.op.1.weight"].shape[0]
                if op == 0:
                    cell = []
                    break
                if op in (1, 2):
                    cell.append(torch.cat([torch.ones(C, 3, 3).reshape(-1).double() / 9, f(f"{e}.{op}.1.weight"),
                                           f(f"{e}.{op}.1.bias")]))
                elif op == 3:
                    if f"{e}.3.conv_1.weight" in sd:
                        cell.append(f(*(f"{e}.3.{n}" for n in ("conv_1.weight", "conv_2.weight", "bn.weight", "bn.bias"))))
                    else:
                        cell.append(torch.eye(C).reshape(-1).double())
                elif op in (4, 5):
                    cell.append(f(*(f"{e}.{op}.op.{n}.weight" for n in (1, 2, 5, 6))))
                    cell.append(f(f"{e}.{op}.op.3.weight", f"{e}.{op}.op.3.bias", f"{e}.{op}.op.7.weight",
                                  f"{e}.{op}.op.7.bias"))
                else:
                    cell.append(f(f"{e}.{op}.op.1.weight", f"{e}.{op}.op.2.weight"))
                    cell.append(f(f"{e}.{op}.op.3.weight", f"{e}.{op}.op.3.weight"))
            if cell:
                param_list.append(torch.cat(cell))
        if param_list:
            arch_vector.append(torch.cat(param_list))
    extra.append(f("classifier.weight"))
    return torch.cat(arch_vector + extra)


def _to_reference_darts(state):
    """Our DARTS supernet names -> the reference's (the inverse of convert_reference_state_dict)."""
    out = {}
    for name, t in state.items():
        parts = name.split(".")
        if len(parts) > 4 and parts[2] == "edges":
            name = ".".join([parts[0], parts[1], "_ops", parts[3], "_ops", str(PRIMITIVES.index(parts[4]))] + parts[5:])
        out[name] = t
    return out


def test_darts_reference_angle_vector_is_the_reference_codes():
    torch.manual_seed(0)
    net = build_supernet("darts", 10, C=4, layers=5, pool_bn=True)
    weights = dict(net.named_parameters())
    reference_names = _to_reference_darts(weights)
    rng = np.random.default_rng(1)
    archs = [get_space("darts").sample(rng) for _ in range(3)]
    archs.append(tuple([1, 2, 0, 3, 4, 0, 0, 5, 6, 0, 0, 0, 7, 3] * 2))
    for arch in archs:
        ours = net.reference_angle_vector(weights, arch)
        expected = _reference_darts_vector(reference_names, list(arch[:14]), list(arch[14:]), 5)
        assert torch.equal(ours, expected), arch


def _to_rlnas(state):
    out = {}
    for name, t in state.items():
        parts = name.split(".")
        if len(parts) > 3 and parts[2] == "layers":
            node, src = EDGES[int(parts[3])]
            name = ".".join([parts[0], parts[1], "edges", f"{node}<-{src}"] + parts[4:])
        out[name] = t
    return out


def _reference_nb201_vector(sd, arch, n_cells):
    """RLNAS exps/angle/weight_angle.py, over RLNAS key names; None when every path is blocked."""
    f = lambda *names: [sd[n].reshape(-1).double() for n in names]  # noqa: E731
    ops = {(i, j): OP_NAMES[g] for (i, j), g in zip(EDGES, arch)}
    vec, fixed_done, blocked = f("stem.0.weight", "stem.1.weight", "stem.1.bias"), set(), 0
    for path in ([0, 3], [0, 2, 3], [0, 1, 2, 3], [0, 1, 3]):
        for c in range(n_cells):
            if f"cells.{c}.conv_a.op.1.weight" in sd:
                if c not in fixed_done:
                    fixed_done.add(c)
                    vec += f(*(f"cells.{c}.{n}" for n in ("conv_a.op.1.weight", "conv_a.op.2.weight", "conv_a.op.2.bias",
                                                         "conv_b.op.1.weight", "conv_b.op.2.weight", "conv_b.op.2.bias",
                                                         "downsample.1.weight")))
                continue
            pieces, stop = [], False
            for j, i in zip(path, path[1:]):
                op = ops[(i, j)]
                if op == "none":
                    blocked, stop = blocked + 1, True
                    break
                if op == "avg_pool_3x3":
                    C = sd[f"cells.{c}.edges.{i}<-{j}.3.op.1.weight"].shape[0]
                    pieces.append(torch.ones(C * 9).double() / 9)
                elif op.startswith("nor_conv"):
                    pieces += f(f"cells.{c}.edges.{i}<-{j}.{OP_NAMES.index(op)}.op.1.weight")
            if stop:
                break
            vec += pieces
    if blocked == 4:
        return None
    return torch.cat(vec + f("lastact.0.weight", "lastact.0.bias", "classifier.weight", "classifier.bias"))


def test_nb201_reference_angle_vector_is_rlnas_and_hand_counted(tmp_path):
    torch.manual_seed(0)
    net = build_supernet("nb201", 10, C=4, N=1, affine=False)
    weights = dict(net.named_parameters())
    rlnas = _to_rlnas(weights)
    rng = np.random.default_rng(2)
    archs = [get_space("nb201").sample(rng) for _ in range(20)] + [(3,) * 6, (4, 0, 4, 1, 2, 3)]
    for arch in archs:
        ours, expected = net.reference_angle_vector(weights, arch), _reference_nb201_vector(rlnas, arch, 5)
        assert (ours is None) == (expected is None), arch
        if ours is not None:
            assert torch.equal(ours, expected), arch
    # all nor_conv_3x3, C=4, N=1: 116 head + 8 edge visits x (144 + 576 + 2304) + 928 + 3648 blocks + 202 tail
    assert net.reference_angle_vector(weights, (3,) * 6).numel() == 116 + 8 * (144 + 576 + 2304) + 928 + 3648 + 202
    assert net.reference_angle_vector(weights, (3, 3, 3, 0, 0, 0)) is None  # no path reaches node 3
    # an RLNAS checkpoint ({"search_model", "args" Namespace, ...}) loads with affine=False
    path = tmp_path / "seed-0_epoch_250.pth"
    torch.save({"epoch": 250, "args": argparse.Namespace(rand_seed=0), "w_optimizer": {},
                "search_model": {**_to_rlnas(net.state_dict()), "arch_parameters": torch.zeros(6, 5)}}, path)
    loaded = load_supernet(path, "nb201", 10, C=4, N=1, affine=False)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    with pytest.raises(LayoutError, match=r"missing key\(s\).*set supernet\.affine=false"):
        load_supernet(path, "nb201", 10, C=4, N=1, affine=True)


# ----------------------------------------------------------------------------------------------------------
# The search CLI scores a reference checkpoint pair (epoch 250 + epoch 0 for the angle)
# ----------------------------------------------------------------------------------------------------------
def test_search_cli_scores_reference_checkpoints_with_the_reference_angle(tmp_path, monkeypatch):
    import genas.train_supernet
    from genas.search import main

    # the CLI's supernet-quality report (10 DARTS paths over all of digits' validation half) is ~90% of this
    # run on a CPU and is not what is tested here
    monkeypatch.setattr(genas.train_supernet, "sampled_path_accuracy", lambda *a, **k: {
        "mean": 0.0, "median": 0.0, "min": 0.0, "max": 0.0, "num_paths": 0, "num_images": 0})

    torch.manual_seed(0)
    init = build_supernet("darts", 10, C=4, layers=3, pool_bn=True)
    final = build_supernet("darts", 10, C=4, layers=3, pool_bn=True)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for epoch, net in ((0, init), (250, final)):
        torch.save({"epoch": epoch, "state_dict": _to_reference_darts(net.state_dict()), "optimizer": {}},
                   ref_dir / f"checkpoint_epoch_{epoch}.pth.tar")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("space: darts\nsupernet: {C: 4, layers: 3, pool_bn: true}\ndata: {name: digits}\n"
                   "score: {metric: angle, angle_vector: reference}\n"
                   "search: {algorithm: random, random_num: 3}\ntrain: {device: cpu}\n")
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "--supernet", str(ref_dir / "checkpoint_epoch_250.pth.tar"),
                 "--out", str(out), "--no-progress"]) == 0
    best = json.loads((out / "best_genotype.json").read_text())
    arch = get_space("darts").from_string(best["arch"])
    a = _reference_darts_vector(_to_reference_darts(dict(init.named_parameters())), arch[:14], arch[14:], 3)
    b = _reference_darts_vector(_to_reference_darts(dict(final.named_parameters())), arch[:14], arch[14:], 3)
    angle = math.acos(float((torch.dot(a, b) / (a.norm() * b.norm())).detach()))
    assert best["score"] == pytest.approx(angle / math.pi, rel=1e-9)
