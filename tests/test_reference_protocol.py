"""Each option of the reference protocol (README "Reference protocol vs defaults") against a hand computation,
and the presets of configs/search/reference/ (every one loads and validates)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from genas import data as gdata
from genas.core.config import ConfigError, load_config
from genas.evolution import SearchSettings
from genas.scoring.formulas import REFERENCE_GAMMA, flatness_from_losses
from genas.scoring.perturbation import (PerturbationConfig, fixed_batches, mean_loss, perturbed_losses,
                                        recalibrated_bn)
from genas.scoring.scorer import ArchScorer, check_score_config
from genas.spaces import SpaceOptionError, build_supernet, get_space, space_options
from genas.spaces.darts.space import repair
from genas.train_supernet import check_train_config, train_step

from conftest import SHARED_DATA  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "configs" / "search" / "reference").glob("*.yaml"))
SPLITS = SHARED_DATA / "nb201" / "splits"
needs_splits = pytest.mark.skipif(not (SPLITS / "cifar-split.txt").is_file(),
                                  reason=f"NB201 split files not found in {SPLITS} (not committed: set GENAS_SHARED_DATA "
                                         f"to the folder holding nb201/splits/, or get them from AutoDL-Projects)")


# ---------------------------------------------------------------------------------------------- supernet
def test_supernet_affine_false_nb201_cell_bns_only_and_export_is_the_same_function():
    torch.manual_seed(0)
    net = build_supernet("nb201", 10, C=4, N=1, affine=False).eval()
    names = {n for n, _ in net.named_parameters()}
    assert "cells.0.layers.0.3.op.1.weight" in names and "cells.0.layers.0.3.op.2.weight" not in names
    assert {"stem.1.weight", "cells.1.conv_a.op.2.weight", "lastact.0.weight"} <= names  # affine outside cells
    arch = (3, 2, 3, 4, 1, 3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.export(arch).eval()(x), net(x, arch), atol=1e-6)


def test_supernet_pool_bn_puts_a_bn_after_darts_pooling_on_the_path():
    net = build_supernet("darts", 10, C=4, layers=3, pool_bn=True)
    arch = tuple([1, 2, 0, 3, 4, 0, 0, 5, 6, 0, 0, 0, 7, 3] * 2)
    names = net.path_parameter_names(arch)
    assert "cells.0.edges.0.max_pool_3x3.1.weight" in names and "cells.0.edges.1.avg_pool_3x3.1.bias" in names
    assert not any("pool" in n for n in build_supernet("darts", 10, C=4, layers=3).path_parameter_names(arch))
    with pytest.raises(SpaceOptionError, match=r"\['pool_bn'\] do not apply to the nb201 supernet"):
        build_supernet("nb201", 10, C=4, N=1, pool_bn=True)


# ---------------------------------------------------------------------------------------------- training
def test_train_zero_grad_zeros_decays_and_moves_off_path_weights_by_hand():
    torch.manual_seed(0)
    lr, mom, wd = 0.1, 0.9, 1e-2
    results = {}
    a, b = (3, 0, 0, 0, 1, 0), (2, 0, 0, 0, 1, 0)  # 1<-0 conv3x3 then conv1x1, 3<-1 skip: a's conv is off b's path
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for mode in ("none", "zeros"):
        torch.manual_seed(0)
        net = build_supernet("nb201", 10, C=4, N=1)
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=mom, weight_decay=wd)
        name = "cells.0.layers.0.3.op.1.weight"
        w = dict(net.named_parameters())[name]
        train_step(net, opt, x, y, a, grad_clip=0.0, scaler=scaler, zero_grad=mode)
        w1, buf1 = w.detach().clone(), opt.state[w]["momentum_buffer"].clone()
        train_step(net, opt, x, y, b, grad_clip=0.0, scaler=scaler, zero_grad=mode)
        results[mode] = (w1, buf1, w.detach().clone())
    w1, _, w2 = results["none"]
    assert torch.equal(w1, w2)  # off the path: untouched
    w1, buf1, w2 = results["zeros"]
    expected = w1 - lr * (mom * buf1 + wd * w1)  # zero gradient: weight decay + momentum step (torch SGD)
    assert torch.allclose(w2, expected, atol=1e-7) and not torch.equal(w1, w2)


def test_train_grad_clip_zero_is_unclipped_sgd():
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    w0 = net.weight.detach().clone()
    x, y = torch.randn(5, 3) * 100, torch.tensor([0, 1, 0, 1, 0])
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    train_step(net, opt, x, y, grad_clip=0.0, scaler=torch.amp.GradScaler("cpu", enabled=False))
    torch.manual_seed(0)
    ref = nn.Linear(3, 2)  # the same initial weights
    nn.functional.cross_entropy(ref(x), y).backward()
    assert torch.allclose(net.weight, w0 - 0.5 * ref.weight.grad)  # no clipping although the norm is ~100


def test_train_sampling_per_cell_rlnas_rule_and_forward():
    space = get_space("nb201")
    rng = np.random.default_rng(0)
    draws = np.array([space.sample_cells(rng, 1)[0] for _ in range(6000)])
    assert (draws[:, 0] != 0).all()  # node 1: its single edge is never none
    assert (draws[:, [1, 2]] != 0).any(axis=1).all() and (draws[:, [3, 4, 5]] != 0).any(axis=1).all()
    counts = np.bincount(draws[:, 0], minlength=5)[1:] / len(draws)
    assert np.allclose(counts, 0.25, atol=0.02)  # uniform over the 4 non-none ops
    pair = draws[:, 1] * 5 + draws[:, 2]  # node 2: uniform over the 24 non-(none, none) pairs
    assert np.allclose(np.bincount(pair, minlength=25)[1:] / len(draws), 1 / 24, atol=0.01)
    torch.manual_seed(0)
    net = build_supernet("nb201", 10, C=4, N=2).eval()
    cells = space.sample_cells(np.random.default_rng(1), net.num_search_cells)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h, k = net.stem(x), 0
        for cell in net.cells:  # by hand: each search cell runs its own architecture
            if hasattr(cell, "layers"):
                from genas.spaces.nb201.space import cell_plan
                h, k = cell(h, cells[k], cell_plan(cells[k])), k + 1
            else:
                h = cell(h)
        assert torch.equal(net(x, cells), net.forward_head(h))
        assert torch.equal(net(x, [cells[0]] * net.num_search_cells), net(x, cells[0]))
    with pytest.raises(ConfigError, match="train.sampling=per_cell .* applies to nb201 only"):
        check_train_config(load_config(None, ["space=darts", "train.sampling=per_cell"]))


def test_train_rlnas_options_run_end_to_end(tmp_path):
    from genas.core.io import load_checkpoint
    from genas.train_supernet import train_supernet

    cfg = load_config(None, ["supernet.C=4", "supernet.N=1", "supernet.affine=false", "train.epochs=1",
                             "train.batch_size=128", "train.workers=0", "train.sampling=per_cell",
                             "train.zero_grad=zeros", "train.nesterov=true", "train.grad_clip=0",
                             "train.checkpoint_every_steps=1000"])
    final = train_supernet(cfg, tmp_path, show_progress=False)
    last = load_checkpoint(final.parent / "last.pt")
    assert last["optimizer"]["param_groups"][0]["nesterov"] is True
    assert load_checkpoint(final)["supernet"] == {"C": 4, "N": 1, "affine": False}
    with pytest.raises(ConfigError, match="grad_clip must be >= 0"):
        check_train_config(load_config(None, ["train.grad_clip=-1"]))


@pytest.mark.parametrize("mode, shift", [("per_epoch", 0), ("per_epoch_shifted", 1)])
def test_train_lr_schedule_per_epoch_is_the_reference_cosine(mode, shift):
    """AutoDL (RLNAS NB201) holds epoch e at the cosine of e; GeNAS / RLNAS DARTS (torch's CosineAnnealingLR,
    T_max = epochs, stepped before each epoch) train epoch e at the value of e + 1."""
    from genas.train_supernet import lr_scheduler
    lr, lr_min, epochs, steps = 0.025, 0.001, 4, 3
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = lr_scheduler(optimizer, {"lr_schedule": mode, "epochs": epochs, "lr": lr, "lr_min": lr_min}, steps)
    seen = []
    for _ in range(epochs * steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [lr_min + (lr - lr_min) * (1 + math.cos(math.pi * (e + shift) / epochs)) / 2
                for e in range(epochs) for _ in range(steps)]
    assert seen == pytest.approx(expected, rel=1e-12, abs=0)
    assert seen[0] == pytest.approx(lr if shift == 0 else 0.021485281374, rel=1e-10)  # hand: .001 + .012 (1 + 1/sqrt 2)
    if shift:
        assert seen[-1] == pytest.approx(lr_min, rel=1e-12)  # the reference's last epoch runs at eta_min
    per_step = lr_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr),
                            {"lr_schedule": "per_step", "epochs": epochs, "lr": lr, "lr_min": lr_min}, steps)
    assert isinstance(per_step, torch.optim.lr_scheduler.CosineAnnealingLR) and per_step.T_max == epochs * steps
    with pytest.raises(ConfigError, match="train.lr_schedule must be one of"):
        load_config(None, ["train.lr_schedule=per_batch"])


# ---------------------------------------------------------------------------------------------- data
@needs_splits
def test_data_split_file_autodl_files():
    src, train, val = gdata.split_from_file(SPLITS / "cifar-split.txt", 50000, 10000)
    assert src == "train" and len(train) == len(val) == 25000 and train[:5].tolist() == [0, 5, 7, 11, 13]
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(50000))
    src, train, val = gdata.split_from_file(SPLITS / "cifar100-split.txt", 50000, 10000)
    assert train[:3].tolist() == [41774, 45077, 14344] and val[:3].tolist() == [38724, 43946, 20889]  # file order
    src, train, val = gdata.split_from_file(SPLITS / "cifar100-test-split.txt", 50000, 10000)
    assert src == "test" and np.array_equal(train, np.arange(50000)) and len(val) == 5000 and val[:3].tolist() == [1, 3, 4]
    src, train, val = gdata.split_from_file(SPLITS / "imagenet-16-120-test-split.txt", 151700, 6000)
    assert src == "test" and len(train) == 151700 and len(val) == 3000
    with pytest.raises(gdata.DatasetError, match="lists indices up to 49994 but the training set has 1797"):
        gdata.split_from_file(SPLITS / "cifar-split.txt", 1797, None)


def test_data_split_file_builds_the_listed_halves(tmp_path, monkeypatch):
    path = tmp_path / "digits-split.txt"
    path.write_text(json.dumps({"train": ["int", ["5", "3", "9"]], "valid": ["int", ["0", "1"]]}))
    data = gdata.build_search_data({"name": "digits", "split_file": str(path)})
    assert data.train.indices.tolist() == [5, 3, 9] and data.val.indices.tolist() == [0, 1]
    # a test-split file: train on the whole training set, validate on the test set's xvalid images
    xpath = tmp_path / "test-split.txt"
    xpath.write_text(json.dumps({"xvalid": ["int", ["2", "7"]], "xtest": ["int", ["0", "1"]]}))
    bases = {True: gdata.ImageTensors(torch.zeros(50, 3, 4, 4, dtype=torch.uint8), torch.zeros(50)),
             False: gdata.ImageTensors(torch.ones(10000, 3, 4, 4, dtype=torch.uint8), torch.arange(10000) % 100)}
    monkeypatch.setattr(gdata, "_load_base", lambda name, cfg, train=True: (bases[train], 100))
    data = gdata.build_search_data({"name": "cifar100", "root": "x", "split_file": str(xpath)})
    assert data.train.base is bases[True] and data.train.indices.tolist() == list(range(50))
    assert data.val.base is bases[False] and data.val.indices.tolist() == [2, 7] and data.val[1][1] == 7
    path.write_text(json.dumps({"train": [1, 2]}))
    with pytest.raises(gdata.DatasetError, match=r"key 'train' must map to \[\"int\", \[index strings\]\]"):
        gdata.build_search_data({"name": "digits", "split_file": str(path)})


# ---------------------------------------------------------------------------------------------- scoring
class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn(x)


def test_score_bn_recal_reference_is_the_momentum_ema_from_zero_one():
    torch.manual_seed(0)
    net = _BNNet()
    batches = [(torch.randn(4, 2, 3, 3) * (i + 1) + i, None) for i in range(3)]
    mean, var = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    for x, _ in batches:  # by hand: running = 0.9 * running + 0.1 * batch statistic (unbiased variance)
        xd = x.double().transpose(0, 1).reshape(2, -1)
        mean = 0.9 * mean + 0.1 * xd.mean(1)
        var = 0.9 * var + 0.1 * xd.var(1, unbiased=True)
    with recalibrated_bn(net, net, batches, mode="reference"):
        assert torch.allclose(net.bn.running_mean.double(), mean, atol=1e-6)
        assert torch.allclose(net.bn.running_var.double(), var, atol=1e-5)
    allx = torch.cat([x for x, _ in batches]).double().transpose(0, 1).reshape(2, -1)
    with recalibrated_bn(net, net, batches, mode="exact"):
        assert torch.allclose(net.bn.running_mean.double(), allx.mean(1), atol=1e-6)
    assert torch.equal(net.bn.running_mean, torch.zeros(2)) and net.bn.momentum == 0.1  # restored


def test_score_loss_mean_batches_and_val_order_file():
    logits = [torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([[0.0, 3.0]])]
    labels = [torch.tensor([0, 0, 1]), torch.tensor([0])]
    batches = list(zip(logits, labels))
    per = [nn.functional.cross_entropy(x, y, reduction="none") for x, y in batches]
    assert mean_loss(lambda x: x, batches, loss_mean="samples") == pytest.approx(float(torch.cat(per).mean()))
    assert mean_loss(lambda x: x, batches, loss_mean="batches") == pytest.approx(
        float((per[0].mean() + per[1].mean()) / 2))
    ds = TensorDataset(torch.arange(10).float().view(10, 1), torch.arange(10))
    assert torch.cat([y for _, y in fixed_batches(ds, None, 4, 0, "cpu", shuffle=False)]).tolist() == list(range(10))


def test_score_fresh_draws_noise_from_one_running_generator():
    torch.manual_seed(0)
    net = build_supernet("nb201", 10, C=4, N=1).eval()
    arch = (3, 1, 2, 4, 3, 2)
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))]
    cfg = PerturbationConfig(sigmas=(1e-2,), common_random_numbers=False, fresh_draws=True)
    gen = torch.Generator().manual_seed(7)
    first = perturbed_losses(net, arch, batches, cfg, generator=gen)
    second = perturbed_losses(net, arch, batches, cfg, generator=gen)
    assert first != second  # the stream ran on: the same candidate gets other noise
    # by hand: theta + 0.01 * randn from the generator seeded 7, drawn in path-parameter order
    gen = torch.Generator().manual_seed(7)
    params = dict(net.named_parameters())
    originals = {n: params[n].detach().clone() for n in net.path_parameter_names(arch)}
    with torch.no_grad():
        for n in net.path_parameter_names(arch):
            params[n].add_(torch.randn(params[n].shape, generator=gen), alpha=1e-2)
        expected = float(nn.functional.cross_entropy(net(batches[0][0], arch), batches[0][1]))
        for n, v in originals.items():
            params[n].copy_(v)
    assert first[0] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="contradicts score.common_random_numbers=true"):
        check_score_config({"fresh_draws": True})


def test_score_flatness_eps_gamma_table():
    losses, sigmas = [1.0, 2.0, 3.0], [1e-3, 2e-3, 3e-3]
    assert flatness_from_losses(losses, sigmas, 1.0, 1e-5) == pytest.approx(1 / (1000 + 1000 + 1000 + 1e-5), rel=1e-12)
    assert flatness_from_losses([1.0, 1.0], [1e-3, 2e-3], 0.0, 1e-5) == pytest.approx(1e5)  # finite, not inf
    assert REFERENCE_GAMMA == {"angle+flatness": 16.0, "accuracy+flatness": 32.0}


def _tiny_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_score_gamma_acc_and_recalib_batches_acc_by_hand():
    torch.manual_seed(0)
    init = build_supernet("nb201", 10, C=4, N=1)
    torch.manual_seed(1)
    net = build_supernet("nb201", 10, C=4, N=1)
    train, val = _tiny_data(64, 0), _tiny_data(32, 1)
    arch = (3, 1, 2, 4, 3, 2)
    cfg = {"metric": "angle+accuracy", "gamma_acc": 10.0, "recalib_batches": 2, "batch_size_recalib": 16,
           "eval_batches": 2, "eval_batch_size": 16, "channels_last": False}
    r = ArchScorer(net, cfg, train, val, "cpu", init_state_dict=init.state_dict())(arch)
    assert r["score"] == pytest.approx(r["angle"] / math.pi + 10.0 * r["accuracy"], rel=1e-12)
    # accuracy+flatness: the accuracy has its own recalibration batches (the reference's 15,000 images)
    cfg = {**cfg, "metric": "accuracy+flatness", "recalib_batches_acc": 3, "batch_size_recalib": 8}
    scorer = ArchScorer(net, cfg, train, val, "cpu")
    r = scorer(arch)
    from genas.scoring.perturbation import top1_accuracy
    own = fixed_batches(train, 3, 8, 0 + 2, "cpu")
    with recalibrated_bn(net, lambda x: net(x, arch), own):
        expected = top1_accuracy(lambda x: net(x, arch), scorer.val_batches)
    assert r["accuracy"] == expected and len(scorer.acc_recalib_batches) == 3 and len(scorer.recalib_batches) == 2
    # the accuracy's BN batches are exactly these (at chance level on random data, the accuracy alone could not tell)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(scorer.acc_recalib_batches, own))
    assert not torch.equal(scorer.acc_recalib_batches[0][0], scorer.recalib_batches[0][0][:8])


def test_score_angle_vector_reference_all_paths_blocked_scores_zero():
    torch.manual_seed(0)
    init = build_supernet("nb201", 10, C=4, N=1, affine=False)
    net = build_supernet("nb201", 10, C=4, N=1, affine=False)
    scorer = ArchScorer(net, {"metric": "angle", "angle_vector": "reference"}, None, None, "cpu",
                        init_state_dict=init.state_dict())
    assert scorer((3, 3, 3, 0, 0, 0))["angle"] == 0.0  # RLNAS: every path to node 3 has a none edge
    a = net.reference_angle_vector(init.state_dict(), (3,) * 6).double()
    b = net.reference_angle_vector(dict(net.named_parameters()), (3,) * 6).double()
    assert scorer((3,) * 6)["angle"] == pytest.approx(math.acos(float(a @ b / (a.norm() * b.norm()))), rel=1e-9)


# ---------------------------------------------------------------------------------------------- search
def test_search_crossover_per_gene_darts_and_per_node_nb201():
    darts = get_space("darts", crossover="per_gene")
    rng = np.random.default_rng(0)
    a, b = darts.sample(rng), darts.sample(rng)
    child = darts.crossover(a, b, np.random.default_rng(5))
    r = np.random.default_rng(5)  # by hand: a gene from each parent with probability 1/2, then repair
    from_a = r.random(28) < 0.5
    assert child == repair([x if t else y for x, y, t in zip(a, b, from_a)], r)
    assert darts.crossover(a, a, np.random.default_rng(1)) == a
    nb = get_space("nb201", crossover="per_node")
    for seed in range(20):
        c = nb.crossover((1, 1, 1, 1, 1, 1), (2, 2, 2, 2, 2, 2), np.random.default_rng(seed))
        assert len({c[1], c[2]}) == 1 and len({c[3], c[4], c[5]}) == 1  # a node's edges from one parent
    assert get_space("darts").crossover_mode == "per_node" and get_space("nb201").crossover_mode == "per_gene"


def test_search_mutation_options():
    darts = get_space("darts", mutation_genes="normal")
    rng = np.random.default_rng(0)
    arch = darts.sample(rng)
    for _ in range(50):
        assert darts.mutate(arch, 1.0, rng)[14:] == arch[14:]  # reduce genes never mutate
    nb = get_space("nb201", mutation_ops="no_none")
    assert all(0 not in nb.mutate((1,) * 6, 1.0, rng) for _ in range(300))
    assert any(0 in get_space("nb201").mutate((1,) * 6, 1.0, rng) for _ in range(300))
    with pytest.raises(SpaceOptionError, match="mutation_genes='normal' is a DARTS option"):
        get_space("nb201", mutation_genes="normal")
    with pytest.raises(SpaceOptionError, match="unknown search-space option"):
        get_space("darts", dedupe="exact")


# ---------------------------------------------------------------------------------------------- presets
def test_reference_presets_load_and_validate():
    names = [p.stem for p in PRESETS]
    assert names == ["darts_cifar100_accuracy_flatness", "darts_cifar100_angle_flatness", "darts_cifar100_flatness",
                     "darts_cifar10_accuracy_flatness", "darts_cifar10_angle_flatness", "darts_cifar10_flatness",
                     "nb201_cifar10", "nb201_cifar100", "nb201_imagenet16"]
    for path in PRESETS:
        text = path.read_text()
        assert "Reproduces" in text or "train_supernet.sh" in text, path.name
        cfg = load_config(path)
        score = check_score_config(cfg["score"])
        SearchSettings.from_config(cfg["search"])
        get_space(cfg["space"], **space_options(cfg["search"]))
        check_train_config(cfg)
        assert (score["bn_recal"], score["noise"], score["fresh_draws"], score["loss_mean"], score["noise_stream"]) == \
            ("reference", "cumulative", True, "batches", "reference")
        assert (score["recalib_batches"], score["eval_batches"], score["batch_size_recalib"]) == (14, 391, 64)
        assert cfg["train"]["zero_grad"] == "zeros" and cfg["data"]["split_file"] is not None
        if cfg["space"] == "darts":
            assert cfg["supernet"]["pool_bn"] and cfg["search"]["crossover"] == "per_gene"
            assert cfg["search"]["mutation_genes"] == "normal" and (cfg["search"]["population"], cfg["search"]["topk"]) == (50, 10)
            assert score["sigmas"] == ([1e-5, 5e-5, 1e-4] if "cifar10_" in path.name else [1e-3, 3e-3, 6e-3])
            assert score["gamma"] == REFERENCE_GAMMA.get(score["metric"], 0.0)
            assert (score["angle_vector"] == "reference") == (score["metric"] == "angle+flatness")
        else:
            assert cfg["supernet"]["affine"] is False and cfg["train"]["sampling"] == "per_cell"
            assert cfg["train"]["nesterov"] and cfg["train"]["grad_clip"] == 0.0
            assert score["sigmas"] == [2e-3, 1e-2, 2e-2] and cfg["search"]["algorithm"] == "exhaustive"
