"""benchmarks/gpu_check.py runs every part on a CPU with ``--tiny`` (so it is known to work before a GPU is
lent) with no failed row, prints one markdown table whose derived figures (ratios, projections) are the
quotients of its own measured figures, writes the same rows as JSON, and a failing variant fails its row only."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import sys
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="module")
def tiny_run(gpu_check, tmp_path_factory):
    """One ``--device cpu --tiny`` run of every part: (exit code, printed text, JSON, markdown file)."""
    out = tmp_path_factory.mktemp("gpu_check")
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = gpu_check.main(["--device", "cpu", "--tiny", "--json", str(out / "rows.json"), "--md",
                                   str(out / "table.md")])
    finally:
        torch._dynamo.reset()  # the torch.compile variant leaves no compiled state to the rest of the session
    return code, printed.getvalue(), json.loads((out / "rows.json").read_text()), (out / "table.md").read_text()


def _rows(data, part_prefix):
    return {r["variant"]: r for r in data["rows"] if r["part"].split(" (")[0] == part_prefix}


def _printed_figure(printed: str, part_prefix: str, variant: str) -> float:
    """The figure column of the markdown row ``variant`` of the part, as printed (4 significant digits)."""
    for line in printed.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 6 and cells[0].split(" (")[0] == part_prefix and cells[1] == variant:
            return float(cells[2].split()[0])
    raise AssertionError(f"no printed row {part_prefix} / {variant}")


def test_tiny_cpu_run_has_every_part_and_no_failed_row(tiny_run):
    code, printed, data, table = tiny_run
    failed = [(r["part"], r["variant"], r["note"]) for r in data["rows"] if r["status"] == "failed"]
    assert failed == [] and code == 0
    assert data["tiny"] is True and data["device"] == "cpu" and data["total_s"] > 0
    assert all(r["status"] in ("ok", "refused", "skipped", "not available") for r in data["rows"])
    assert all(r["peak_mib"] is None for r in data["rows"])  # no GPU memory on a CPU run
    assert [r["value"] for r in _rows(data, "check").values()] == [0.0, 0.0]
    # one markdown table, the same in the file and on stdout, one line per row
    lines = [line for line in printed.splitlines() if line.startswith("|")]
    assert lines[:2] == ["| part | variant | figure | peak GPU MiB | status | note |", "|---|---|---|---|---|---|"]
    assert len(lines) == len(data["rows"]) + 2 and lines == [line for line in table.splitlines()
                                                             if line.startswith("|")]
    assert "batched" not in printed  # score.batched_sigmas is gone: no row may ask for it


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_scoring_rows_at_paper_settings_and_their_ratios(tiny_run, space):
    code, printed, data, _ = tiny_run
    rows = _rows(data, f"scoring {space}")
    part = f"scoring {space}"
    seconds = {}
    for impl in ("native", "conv"):
        flat = rows[f"flatness fp32, pooling {impl}"]
        fwd = rows[f"forward passes it must run, pooling {impl}"]
        ratio = rows[f"necessary-work ratio, pooling {impl}"]
        assert flat["status"] == fwd["status"] == ratio["status"] == "ok"
        assert flat["unit"] == fwd["unit"] == "s/candidate" and flat["value"] > 0 and fwd["value"] > 0
        assert "3 x 64 val" in flat["note"] and "40 recal (batch 16)" in flat["note"]
        sigmas = "0.002, 0.01, 0.02" if space == "nb201" else "0.001, 0.003, 0.006"
        assert f"sigmas {sigmas}" in flat["note"]
        assert ratio["value"] == pytest.approx(flat["value"] / fwd["value"], rel=1e-12)
        printed_ratio = _printed_figure(printed, part, ratio["variant"])
        printed_quotient = (_printed_figure(printed, part, flat["variant"])
                            / _printed_figure(printed, part, fwd["variant"]))
        assert printed_ratio == pytest.approx(printed_quotient, rel=2e-3)
        seconds[impl] = flat["value"]
        if space == "nb201":
            cells = rows[f"all 15,625 cells, pooling {impl}"]
            assert cells["unit"] == "h" and cells["value"] == pytest.approx(15625 * flat["value"] / 3600, rel=1e-12)
            assert re.search(r"[\d.]+ min on 8", cells["note"])
    choice = rows["pooling: native / conv time"]
    assert choice["value"] == pytest.approx(seconds["native"] / seconds["conv"], rel=1e-12)
    assert f"faster here: {min(seconds, key=seconds.get)}" in choice["note"]
    if space == "nb201":  # bf16: measured with the rank-change acknowledgement, or refused with the reason
        bf16 = rows["flatness bf16 autocast"]
        assert (bf16["status"] == "ok" and bf16["value"] > 0) or (bf16["status"] == "refused"
                                                                  and bf16["note"].startswith("refused: "))


def test_profile_training_backbone_detection_rows(tiny_run):
    code, printed, data, _ = tiny_run
    profile = list(_rows(data, "profile nb201 candidate").values())
    total, top, syncs = profile[0], profile[1:6], profile[6]
    assert total["variant"] == "CPU time of aten ops" and total["unit"] == "ms"
    assert [r["variant"].split(":")[0] for r in top] == [f"top {k}" for k in range(1, 6)]
    assert all(r["variant"].split(": ")[1].startswith("aten::") for r in top)
    values = [r["value"] for r in top]
    assert values == sorted(values, reverse=True) and 0 < sum(values) <= total["value"] * (1 + 1e-9)
    for r in top:
        assert re.match(rf"{round(100 * r['value'] / total['value'])}% of the CPU time, \d+ calls", r["note"])
    assert syncs["unit"] == "calls" and syncs["value"] >= 0 and syncs["value"] == int(syncs["value"])

    for space in ("nb201", "darts"):
        training = _rows(data, f"supernet training {space}")
        assert sorted(training) == sorted(["fp32 (the trainer's step)", "fp32, conv pooling", "bf16 + channels_last",
                                           "fp32, previous step (torch-default SGD, native pooling)"])
        assert all(r["unit"] == "steps/s" and r["value"] > 0 and "batch 8" in r["note"] for r in training.values())
    backbone = _rows(data, "backbone genas_c100")
    assert sorted(backbone) == sorted(["eager fp32", "channels_last fp32", "eager bf16", "torch.compile fp32"])
    assert all(r["unit"] == "images/s" and r["value"] > 0 for r in backbone.values())
    base = backbone["eager fp32"]["value"]
    for r in backbone.values():
        assert f"{r['value'] / base:.2f}x eager fp32" in r["note"]
    assert "compile" in backbone["torch.compile fp32"]["note"]

    detection = _rows(data, "detection RetinaNet")
    if importlib.util.find_spec("detectron2") is None:
        assert [r["status"] for r in detection.values()] == ["skipped"]
    else:
        plain = detection["1 training iteration"]
        assert plain["status"] == "ok" and plain["unit"] == "s/iter" and "2 x 128x96" in plain["note"]
        checkpointed = detection["1 training iteration, grad checkpointing"]
        from detection.config import build_config
        cfg = build_config(str(REPO / "configs/detection/retinanet_genas_c100_FPN_1x.yaml"))
        if "GRAD_CHECKPOINT" in cfg.MODEL.GENAS:
            assert checkpointed["status"] == "ok" and checkpointed["value"] > 0
        else:
            assert checkpointed["status"] == "not available"
    (seg,) = _rows(data, "segmentation DeepLabv3").values()
    if importlib.util.find_spec("mmseg") is None:
        assert seg["status"] == "skipped" and seg["note"].startswith("skipped: ")
    else:
        assert seg["status"] == "ok" and seg["unit"] == "s/iter" and seg["value"] > 0


def test_a_failing_variant_fails_its_row_only(gpu_check, monkeypatch):
    """A fast path that crashes (as batched sigmas did on CUDA) fails its rows; the others keep their figures,
    and the run's exit status says a row failed."""
    import genas.spaces.pooling as pooling

    def crash(*args, **kwargs):
        raise RuntimeError("planted conv failure")

    monkeypatch.setattr(pooling, "avg_pool2d_conv", crash)
    monkeypatch.setitem(pooling.AUTO, "cpu", "native")  # only the variant that asks for conv pooling crashes
    sizes = gpu_check.Sizes(tiny=True)
    sizes.train_steps, sizes.train_warmup = 1, 0
    rows = gpu_check.training_rows(sizes, torch.device("cpu"))
    status = {(r.part.split(" (")[0], r.variant): r.status for r in rows}
    for space in ("nb201", "darts"):
        part = f"supernet training {space}"
        assert status.pop((part, "fp32, conv pooling")) == "failed"
    assert set(status.values()) == {"ok"} and len(status) == 6
    assert "planted conv failure" in next(r.note for r in rows if r.status == "failed")

    monkeypatch.setattr(gpu_check, "fixed_device_findings", lambda: ["backbones/x.py:1: w.cuda()"])
    assert gpu_check.main(["--device", "cpu", "--tiny", "--parts", "check"]) == 1


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
    if not torch.cuda.is_available():
        assert gpu_check.main(["--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
