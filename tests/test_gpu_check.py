"""benchmarks/gpu_check.py runs every part on a CPU with ``--tiny`` (so it is known to work before a GPU is
lent), prints one table with a figure per row, and its code checks (no fixed device in model code, the AMP /
channels_last keys) find what they look for."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass resolves annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)


def test_tiny_cpu_run_prints_every_part(gpu_check, tmp_path, capsys):
    import torch
    out = tmp_path / "rows.json"
    try:
        assert gpu_check.main(["--device", "cpu", "--tiny", "--json", str(out)]) == 0
    finally:
        torch._dynamo.reset()  # the torch.compile part leaves no compiled state to the rest of the session
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    by_part: dict[str, list[dict]] = {}
    for r in rows:
        by_part.setdefault(r["part"].split(" (")[0], []).append(r)
        assert r["variant"] in printed and r["note"].split(";")[0][:40] in printed
    assert [r["value"] for r in by_part["check"]] == [0.0, 0.0]

    for space in ("darts", "nb201"):  # sequential, batched, and bf16 either measured or refused with the reason
        scoring = {r["variant"]: r for r in by_part[f"scoring {space}"]}
        for variant in ("sequential fp32", "batched sigmas fp32", "sequential bf16", "batched sigmas bf16"):
            r = scoring[variant]
            assert (r["unit"] == "s/candidate" and r["value"] > 0) or r["note"].startswith("not allowed: ")
    projected = by_part["scoring nb201"][1]
    assert projected["unit"] == "candidates/s" and "projected" in projected["note"] and "15,625" in projected["note"]
    assert projected["value"] == pytest.approx(1 / by_part["scoring nb201"][0]["value"])

    training = by_part["supernet training nb201"] + by_part["supernet training darts"]
    assert len(training) == 4 and all(r["unit"] == "steps/s" and r["value"] > 0 for r in training)
    backbone = {r["variant"]: r for r in by_part["backbone genas_c100"]}
    assert sorted(backbone) == sorted(f"{m} {d}" for m in ("eager", "channels_last", "torch.compile")
                                      for d in ("fp32", "bf16"))
    assert all(r["unit"] == "images/s" and math.isfinite(r["value"]) and r["value"] > 0 for r in backbone.values())
    assert "compile" in backbone["torch.compile fp32"]["note"]
    for part, package in (("detection RetinaNet", "detectron2"), ("segmentation DeepLabv3", "mmseg")):
        (r,) = by_part[part]
        if importlib.util.find_spec(package) is None:
            assert r["note"].startswith("skipped: ") and r["value"] is None
        else:
            assert r["unit"] == "s/iter" and r["value"] > 0
    assert all(r["peak_mib"] is None for r in rows)  # no GPU memory on a CPU run
    assert "peak GPU MiB" in printed and "total" in printed


def test_fixed_device_check_finds_a_planted_cuda_call(gpu_check, tmp_path):
    assert gpu_check.fixed_device_findings() == []  # the suite's own model code
    for entry in gpu_check.MODEL_CODE:
        path = tmp_path / entry
        if entry.endswith(".py"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x = 1\n")
        else:
            path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "backbones" / "bad.py").write_text(
        "import torch\nw = torch.zeros(3).cuda()  # placed\n# x.cuda() in a comment is fine\n"
        "b = torch.ones(2, device='cuda')\nc = y.to(device)\n")
    found = gpu_check.fixed_device_findings(tmp_path)
    assert [f.split(":")[1] for f in found] == ["2", "4"]


def test_gpu_config_keys_exist_and_bad_arguments_exit_2(gpu_check, capsys):
    assert gpu_check.missing_gpu_keys() == []
    assert gpu_check.main(["--device", "cpu", "--parts", "scoring,bogus"]) == 2
    assert "unknown part(s) ['bogus']" in capsys.readouterr().err
    import torch
    if not torch.cuda.is_available():
        assert gpu_check.main(["--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
