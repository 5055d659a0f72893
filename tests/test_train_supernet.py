"""SPOS supernet training on the embedded digits with a tiny NB201 supernet (C=4, N=1).

The resume test kills a real training process with SIGKILL right after its first mid-epoch checkpoint and
checks that resuming reproduces an uninterrupted run bit for bit.
"""
from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from genas.core.config import load_config
from genas.core.io import load_checkpoint
from genas.spaces import build_supernet, get_space
from genas.data import build_search_data
from genas.train_supernet import load_supernet, main, sampled_path_accuracy, train_step, train_supernet

REPO = Path(__file__).resolve().parents[1]
TINY = ["supernet.C=4", "supernet.N=1", "train.epochs=2", "train.batch_size=64", "train.lr=0.025",
        "train.workers=0", "train.device=cpu", "train.checkpoint_every_steps=5", "train.log_every_steps=3"]
STEPS_PER_EPOCH = 898 // 64  # 14: digits search-train half at batch 64 (TINY), drop_last
CONFIG = REPO / "configs" / "supernet" / "nb201_digits.yaml"


def _log_rows(run: Path) -> list[dict]:
    with open(run / "supernet" / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted tiny run (2 epochs x 14 steps)."""
    out = tmp_path_factory.mktemp("reference")
    train_supernet(load_config(CONFIG, TINY), out, resume=False)
    return out


def test_run_files_schedule_and_log(reference_run):
    run = reference_run / "supernet"
    assert {p.name for p in run.iterdir()} >= {"init.pt", "last.pt", "final.pt", "config.yaml", "train_log.csv",
                                               "tb"}
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    init, final = load_checkpoint(run / "init.pt"), load_checkpoint(run / "final.pt")
    assert (init["epoch"], init["step"], final["epoch"], final["step"]) == (0, 0, 2, 2 * STEPS_PER_EPOCH)
    assert (final["space"], final["supernet"], final["num_classes"]) == ("nb201", {"C": 4, "N": 1, "affine": True}, 10)
    torch.manual_seed(0)  # the trainer seeds with train.seed before building: init.pt is that network
    fresh = build_supernet("nb201", 10, C=4, N=1).state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in init["model"].items())
    assert not torch.equal(init["model"]["classifier.weight"], final["model"]["classifier.weight"])
    model = load_supernet(run / "final.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in final["model"].items())

    rows = _log_rows(reference_run)
    # a row every 3 steps, plus one at each checkpoint (every 5 steps and at each epoch end)
    expected = sorted({s for s in range(1, 29) if s % 3 == 0 or s % 5 == 0 or s % 14 == 0})
    assert [int(r["step"]) for r in rows] == expected
    total = 2 * STEPS_PER_EPOCH
    for row in rows:  # lr used by the row's last step: per-step cosine 0.025 -> 0.001
        t = int(row["step"]) - 1
        assert float(row["lr"]) == pytest.approx(0.001 + 0.5 * 0.024 * (1 + math.cos(math.pi * t / total)), rel=1e-9)
        assert 0.0 <= float(row["acc"]) <= 1.0 and float(row["loss"]) > 0
    assert [int(r["epoch"]) for r in rows if int(r["step"]) in (14, 15)] == [1, 2]


def test_killed_run_resumes_to_identical_weights(reference_run, tmp_path):
    out = tmp_path / "killed"
    last = out / "supernet" / "last.pt"
    cmd = [sys.executable, str(REPO / "genas" / "train_supernet.py"), "--config", str(CONFIG), "--out", str(out),
           *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # bit-exact needs equal thread counts
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run must be killed, not finish"
    assert not (out / "supernet" / "final.pt").exists()
    state = load_checkpoint(last)
    assert 0 < state["step"] < 2 * STEPS_PER_EPOCH and state["step"] % STEPS_PER_EPOCH != 0  # mid-epoch
    rows_before = len(_log_rows(out))

    final = train_supernet(load_config(CONFIG, TINY), out, resume=True)
    got, want = load_checkpoint(final)["model"], load_checkpoint(reference_run / "supernet" / "final.pt")["model"]
    assert got.keys() == want.keys()
    assert [k for k in want if not torch.equal(got[k], want[k])] == []
    strip = [{k: v for k, v in r.items() if k != "time"} for r in _log_rows(out)]
    assert rows_before >= 2 and strip == [{k: v for k, v in r.items() if k != "time"}
                                          for r in _log_rows(reference_run)]
    # a finished run is not retrained
    assert train_supernet(load_config(CONFIG, TINY), out, resume=True) == final


def test_trained_supernet_beats_the_untrained_one_on_sampled_paths(tmp_path):
    """SPOS training learns: the validation top-1 of 4 uniformly sampled paths (each after BN recalibration, as the
    scorer sees them) on the 899 held-out digits rises from chance (init.pt, measured mean 10.8%, max 11.0%) to a
    mean of at least 20% after 5 epochs at width 8 (final.pt, measured mean 26.3%, min 19.2%)."""
    cfg = load_config(CONFIG, ["supernet.C=8", "supernet.N=1", "train.epochs=5", "train.batch_size=32",
                               "train.lr=0.05", "train.workers=0", "train.device=cpu",
                               "train.checkpoint_every_steps=1000", "train.log_every_steps=1000"])
    train_supernet(cfg, tmp_path, resume=False)
    data = build_search_data(cfg["data"])
    untrained, trained = (sampled_path_accuracy(load_supernet(tmp_path / "supernet" / name), data.train, data.val,
                                                num_paths=4) for name in ("init.pt", "final.pt"))
    assert untrained["num_images"] == trained["num_images"] == 899
    assert untrained["mean"] < 0.15 and trained["mean"] >= 0.2 and trained["min"] > untrained["max"], (
        untrained, trained)


def test_one_spos_step_trains_exactly_the_sampled_path():
    """The supernet's step equals the standalone network's step and leaves every other weight untouched."""
    torch.manual_seed(0)
    supernet = build_supernet("nb201", 10, C=4, N=1)
    arch = get_space("nb201").sample(np.random.default_rng(3))
    standalone = supernet.export(arch)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for net, args in ((supernet, (arch,)), (standalone, ())):
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        loss, correct = train_step(net, opt, x, y, *args, grad_clip=5.0, scaler=scaler)
        assert 0 <= int(correct) <= 8
    path = set(supernet.path_parameter_names(arch))
    for name, p in supernet.named_parameters():
        assert (p.grad is not None) == (name in path), name
        assert torch.equal(p.detach(), before[name]) == (name not in path), name
    exported = supernet.export(arch).state_dict()
    for name, value in standalone.state_dict().items():
        assert torch.allclose(exported[name].float(), value.float(), atol=1e-6), name


def test_cli_errors_exit_2_without_writing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epoch: 3}\n")
    assert main(["--config", str(bad), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown config key 'train.epoch'" in err
    assert main(["--config", str(CONFIG), "--out", str(tmp_path / "b"), "data.name=cifar10",
                 f"data.root={tmp_path}"]) == 2
    assert "cifar-10-batches-py" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_existing_runs_are_protected(reference_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reference_run, out)
    assert main(["--config", str(CONFIG), "--out", str(out), *TINY]) == 2
    assert "already holds a run (last.pt); pass --resume" in capsys.readouterr().err
    assert main(["--config", str(CONFIG), "--out", str(out), "--resume", *TINY, "train.epochs=3"]) == 2
    assert "trained with other settings (train.epochs: 2 -> 3)" in capsys.readouterr().err
    # settings that do not change the weights may differ on resume
    assert main(["--config", str(CONFIG), "--out", str(out), "--resume", *TINY, "train.log_every_steps=7"]) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs a POSIX host")
def test_two_process_ddp_run_on_cpu(tmp_path):
    """torchrun with 2 CPU ranks (Gloo): shards of 449 samples -> 7 steps of 64 per epoch; both ranks train
    the same path each step, so exactly the weights on the 7 sampled paths move."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "genas" / "train_supernet.py"), "--config", str(CONFIG), "--out", str(out), *TINY,
           "train.epochs=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    final = load_checkpoint(out / "supernet" / "final.pt")
    init = load_checkpoint(out / "supernet" / "init.pt")
    assert final["step"] == 449 // 64 == 7
    assert [int(r["step"]) for r in _log_rows(out)] == [3, 5, 6, 7]
    supernet, rng = build_supernet("nb201", 10, C=4, N=1), np.random.default_rng(0)  # train.seed = 0
    trained = {name for _ in range(7) for name in supernet.path_parameter_names(supernet.space.sample(rng))}
    moved = {name for name, _ in supernet.named_parameters()
             if not torch.equal(init["model"][name], final["model"][name])}
    assert moved == trained and len(trained) < len(dict(supernet.named_parameters()))
