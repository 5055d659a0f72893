"""A search with the reference's running streams (``score.fresh_draws``: noise and BN batches that run on from
candidate to candidate), killed with SIGKILL in the middle of a generation and resumed in a new process, gives
the uninterrupted search's scores, score for score, with the real scorer (the CLI as users run it)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from genas.spaces import build_supernet

REPO = Path(__file__).resolve().parents[1]
SUPERNET = {"C": 4, "N": 1, "affine": False}
CONFIG = {
    "space": "nb201",
    "supernet": SUPERNET,
    "data": {"name": "digits"},
    "train": {"device": "cpu", "workers": 0, "val_paths": 0},  # no path-accuracy report: not what is tested
    "score": {"metric": "flatness", "sigmas": [2e-3, 2e-2], "noise": "cumulative",
              "common_random_numbers": False, "recalib_batches": 2, "batch_size_recalib": 64,
              "eval_batches": 2, "eval_batch_size": 100, "seed": 3},
    "search": {"population": 10, "topk": 3, "mutation_num": 5, "crossover_num": 5, "iterations": 3, "seed": 1},
}
STREAMS = {  # the reference presets' streams
    "path": {"fresh_draws": True},
    "reference": {"fresh_draws": True, "noise_stream": "reference"},
}


def _search(tmp_path: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "genas" / "search.py"), "--config", str(tmp_path / "cfg.yaml"),
                             "--supernet", str(tmp_path / "supernet.pt"), "--out", str(out), "--save-every", "1",
                             "--no-progress", *extra], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _scores(out: Path) -> dict[str, list[float]]:
    memo = json.loads((out / "search_state.json").read_text())["memo"]
    return {key: [entry["result"]["score"], *entry["result"]["losses"]] for key, entry in memo.items()}


def _memo_size(state: Path) -> int:
    try:
        return len(json.loads(state.read_text())["memo"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.parametrize("stream", sorted(STREAMS))
def test_sigkill_mid_generation_then_resume_equals_the_uninterrupted_search(tmp_path, stream):
    torch.manual_seed(0)
    net = build_supernet("nb201", 10, **SUPERNET)
    with torch.no_grad():  # weights away from the init, so that the noise moves the losses
        for p in net.parameters():
            p.mul_(3.0)
    torch.save({"model": net.state_dict(), "space": "nb201", "supernet": SUPERNET, "num_classes": 10},
               tmp_path / "supernet.pt")
    cfg = {**CONFIG, "score": {**CONFIG["score"], **STREAMS[stream]}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))

    # the uninterrupted search and the one to be killed run side by side (one thread each: the same numbers)
    whole = _search(tmp_path, tmp_path / "whole")
    # killed after 14 saved scores: inside generation 2 (generation 1 holds the first 10)
    state = tmp_path / "killed" / "search_state.json"
    killed = _search(tmp_path, tmp_path / "killed")
    deadline = time.monotonic() + 900
    while _memo_size(state) < 14 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    saved = _memo_size(state)
    assert whole.wait(timeout=900) == 0, whole.stdout.read()
    expected = _scores(tmp_path / "whole")
    assert len(expected) >= 20
    assert 14 <= saved < len(expected), f"the kill came at {saved} of {len(expected)} scores"

    resumed = _search(tmp_path, tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=900) == 0, resumed.stdout.read()
    got = _scores(tmp_path / "killed")
    assert got.keys() == expected.keys()
    different = [k for k in expected if got[k] != expected[k]]
    assert not different, f"{len(different)} of {len(expected)} scores differ after the resume, e.g. {different[:3]}"
    best = lambda out: json.loads((out / "best_genotype.json").read_text())  # noqa: E731
    assert best(tmp_path / "killed") == best(tmp_path / "whole")
