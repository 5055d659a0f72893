"""python -m suite: manifest validation, models (timm names, wildcards, genotypes), cell hashes, states, resume,
status, the report over the cell results, and the SLURM plan run through submitit's local executor.

The cells that really run are ImageNet-A (and a deliberately mislaid ImageNet-R) on ../shared/data/imagenet_tiny
(200 images) with resnet10t at 32x32: a few seconds each on a CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, shared_path
from genas.core.results import read_result, write_result
from suite.cells import Cell, cell_state
from suite.cli import main, status_rows
from suite.evaluations import EVALUATIONS, model_files
from suite.launchers import format_plan, plan_slurm, read_jobs
from suite.manifest import load_manifest

STATES_IN_ORDER = ("done", "stale", "failed", "missing")
CHEAP = {"input_size": [3, 32, 32], "batch_size": 250, "workers": 0}


def _manifest(tmp_path: Path, models=("resnet10t",), evaluations=None, name="t", **top) -> Path:
    body = {"name": name, "out": str(tmp_path / "out"), "data_root": str(tmp_path / "data"),
            "models": list(models), "evaluations": evaluations or {"imagenet-v2": dict(CHEAP)}, **top}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _fake_result(cell: Cell, out: Path, top1: float, hash_: str | None = None) -> Path:
    """A result file as a finished cell leaves it (for state tests that need no run)."""
    path = cell.paths(out)["result"]
    write_result(path, kind="robustness", model=cell.model["name"], metrics={"top1": top1, "top5": top1},
                 set=cell.evaluation, suite={"hash": hash_ or cell.hash})
    return path


# --------------------------------------------------------------------------------------------------
# Manifest validation: one error line, exit 2, nothing written
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit, expected", [
    ({"modles": ["resnet10t"]}, "unknown key(s) modles; known keys: name, out, data_root, models, evaluations, slurm"),
    ({"evaluations": {"imagenet-v3": {}}}, "unknown key(s) imagenet-v3; known keys: imagenet, imagenet-v2"),
    ({"evaluations": {"imagenet-v2": {"batchsize": 8}}}, "unknown key(s) batchsize; known keys: data, resources, "
                                                         "batch_size, workers"),
    ({"evaluations": {"coco-retinanet": {"resources": {"gpu": 2}}}}, "unknown key(s) gpu; known keys: gpus, cpus"),
    ({"models": [{"name": "resnet10t", "weight": "w.pth"}]}, "unknown key(s) weight; known keys: name, model, weights"),
    ({"models": ["resnet10tt"]}, "is not a timm model. Closest timm names"),
    ({"models": ["genas_nothing*"]}, "wildcard 'genas_nothing*' matches no timm model"),
    ({"models": ["resnet10t", "resnet10t"]}, "resnet10t listed twice"),
    ({"models": [{"name": "mine", "genotype": "no_such_cell", "C": 8}]}, "models[0]: genotype 'no_such_cell'"),
])
def test_manifest_mistakes_are_one_error_line_and_nothing_written(tmp_path, capsys, edit, expected):
    path = _manifest(tmp_path)
    body = {**yaml.safe_load(path.read_text()), **edit}
    path.write_text(yaml.safe_dump(body))
    assert main(["run", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


def test_missing_data_is_one_error_before_any_cell(tmp_path, capsys):
    assert main(["run", str(_manifest(tmp_path)), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"data {tmp_path / 'data' / 'imagenetv2-matched-frequency-format-val'}" in err and "--data-root" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# Models, cells, hashes
# --------------------------------------------------------------------------------------------------
def test_wildcard_expands_through_timm_and_cells_are_models_x_evaluations(tmp_path):
    import timm

    import backbones  # noqa: F401

    manifest = load_manifest(_manifest(tmp_path, models=["genas*", "resnet10t"],
                                       evaluations={"imagenet-v2": None, "imagenet-a": None}))
    genas = timm.list_models("genas*")
    assert len(genas) == 4 and [m["name"] for m in manifest.models] == genas + ["resnet10t"]
    cells = manifest.cells()
    assert [c.key for c in cells[:2]] == [f"{genas[0]}/imagenet-v2", f"{genas[0]}/imagenet-a"] and len(cells) == 10
    assert cells[0].data == str(tmp_path / "data" / "imagenetv2-matched-frequency-format-val")
    assert cells[0].paths(manifest.out)["result"] == tmp_path / "out" / genas[0] / "imagenet-v2.json"


def test_hash_follows_settings_not_resources_or_workers(tmp_path):
    def hash_of(**options):
        resources = options.pop("resources", None)
        ev = {**CHEAP, **options, **({"resources": resources} if resources else {})}
        return load_manifest(_manifest(tmp_path, evaluations={"imagenet-v2": ev})).cells()[0].hash

    base = hash_of()
    assert hash_of(workers=3) == base and hash_of(resources={"gpus": 2, "time_min": 5}) == base
    assert hash_of(batch_size=10) != base and hash_of(input_size=[3, 64, 64]) != base
    assert load_manifest(_manifest(tmp_path), data_root=str(tmp_path / "elsewhere")).cells()[0].hash != base
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"1")
    with_weights = load_manifest(_manifest(tmp_path, models=[{"name": "resnet10t", "weights": str(weights)}]))
    first = with_weights.cells()[0].hash
    assert first != base
    weights.write_bytes(b"22")  # a new checkpoint at the same path: the cell is stale
    assert load_manifest(_manifest(tmp_path, models=[{"name": "resnet10t", "weights": str(weights)}])
                         ).cells()[0].hash != first


def test_genotype_model_becomes_a_timm_hub_folder_that_builds_the_cell(tmp_path):
    import timm

    from genas.spaces.darts import parse_genotype

    manifest = load_manifest(_manifest(tmp_path, models=[{"name": "mine", "genotype": "genas_flatness_cifar100",
                                                          "C": 8, "layers": 5}]))
    model = manifest.models[0]
    assert (model["architecture"], model["model_args"]["C"], model["model_args"]["layers"]) == ("darts_imagenet", 8, 5)
    files = model_files(model, tmp_path / "models")
    assert files["classifier"] == f"local-dir:{tmp_path / 'models' / 'mine'}"
    net = timm.create_model(files["classifier"])
    assert net.genotype == parse_genotype("genas_flatness_cifar100") and net.num_classes == 1000
    assert tuple(net.pretrained_cfg["mean"]) == (0.0, 0.0, 0.0)  # the architecture's own cfg: inputs in [0, 1]
    assert json.loads(Path(files["model_args"]["genotype"]).read_text()) == model["model_args"]["genotype"]


def test_local_dir_model_and_the_command_lines(tmp_path):
    """A timm hub folder is evaluated through its own name and weights; detection / segmentation get its
    architecture and weights file. Multi-process cells: torchrun, Detectron2's --num-gpus, MMEngine's launcher."""
    from suite.cells import _launch
    from suite.evaluations import Step, build_steps

    hub = tmp_path / "hub" / "mine"
    hub.mkdir(parents=True)
    (hub / "config.json").write_text(json.dumps({"architecture": "resnet10t", "num_classes": 1000,
                                                 "pretrained_cfg": {}, "model_args": {}}))
    (hub / "model.safetensors").write_bytes(b"")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"1")
    manifest = load_manifest(_manifest(tmp_path, models=[f"local-dir:{hub}", {"name": "resnet10t",
                                                                              "weights": str(weights)}],
                                       evaluations={"imagenet-v2": None, "coco-retinanet": None}))
    mine, plain = manifest.models
    assert (mine["name"], mine["architecture"], mine["weights"]) == ("mine", "resnet10t", str(hub / "model.safetensors"))
    work = tmp_path / "work"
    argv = {}
    for cell in manifest.cells():
        steps, produced = build_steps(cell.to_dict(), model_files(cell.model, tmp_path / "models"), work, "cuda")
        argv[cell.key] = steps[0].argv
    v2 = argv["mine/imagenet-v2"]
    assert v2[v2.index("--model") + 1] == f"local-dir:{hub}" and "--pretrained" in v2 and "--checkpoint" not in v2
    v2 = argv["resnet10t/imagenet-v2"]
    assert v2[v2.index("--checkpoint") + 1] == str(weights) and v2[v2.index("--device") + 1] == "cuda"
    det = argv["mine/coco-retinanet"]
    assert det[det.index("MODEL.GENAS.NAME") + 1] == "resnet10t"
    assert det[det.index("MODEL.GENAS.WEIGHTS") + 1] == str(hub / "model.safetensors")
    assert _launch(Step(v2), 2, 29511, False, "robustness")[:6] == [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    assert _launch(Step(v2), 2, 29511, True, "robustness") == v2  # SLURM tasks are the processes
    launched = _launch(Step(det, spawns=True), 8, 29511, False, "detection")
    assert launched[2:6] == ["--num-gpus", "8", "--dist-url", "tcp://127.0.0.1:29511"] and launched[6:] == det[2:]
    seg = _launch(Step([sys.executable, "segmentation/train.py", "cfg.py", "--work-dir", "w"]), 4, 1, False,
                  "segmentation")
    assert seg[-6:] == ["segmentation/train.py", "cfg.py", "--launcher", "pytorch", "--work-dir", "w"]


def test_local_gpus_one_cell_per_gpu_and_multi_gpu_cells_wait(tmp_path, monkeypatch):
    """The GPU scheduler with the cells replaced by a recorder: no GPU is ever given to two cells at once."""
    import threading
    import time

    import suite.launchers as launchers

    manifest = load_manifest(_manifest(tmp_path, models=["resnet10t", "resnet14t"],
                                       evaluations={"imagenet-v2": None, "imagenet-a": None,
                                                    "cityscapes-deeplabv3": {"resources": {"gpus": 4}}}))
    busy: set[str] = set()
    lock = threading.Lock()
    runs = []

    def fake_run_cell(cell, out, device, nproc, port, env):
        gpus = env["CUDA_VISIBLE_DEVICES"].split(",")
        with lock:
            assert not busy & set(gpus), (cell.key, busy, gpus)
            busy.update(gpus)
        time.sleep(0.05)
        with lock:
            busy.difference_update(gpus)
            runs.append((cell.key, device, nproc, len(gpus)))
        return {"key": cell.key, "state": "done", "seconds": 0.05, "error": ""}

    monkeypatch.setattr(launchers, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(launchers, "run_cell", fake_run_cell)
    done = []
    results = launchers.run_local(manifest.cells(), manifest.out, "cuda", on_done=done.append)
    assert len(results) == len(done) == 6 and {r["state"] for r in results} == {"done"}
    assert sorted((k, n) for k, _, n, _ in runs) == sorted(
        (c.key, 2 if c.evaluation == "cityscapes-deeplabv3" else 1) for c in manifest.cells())  # 4 GPUs capped at 2
    assert {d for _, d, _, _ in runs} == {"cuda"} and all(n == g for _, _, n, g in runs)


# --------------------------------------------------------------------------------------------------
# States, status, the report
# --------------------------------------------------------------------------------------------------
def test_states_status_and_the_report_agree(tmp_path, capsys):
    from report.table import main as report_main

    manifest = load_manifest(_manifest(tmp_path, models=["resnet10t", "resnet14t"],
                                       evaluations={"imagenet-v2": None, "imagenet-a": None}))
    out = Path(manifest.out)
    done, stale, failed, missing = manifest.cells()
    _fake_result(done, out, 61.5)
    _fake_result(stale, out, 3.5, hash_="0123456789abcdef")
    failed_paths = failed.paths(out)
    failed_paths["log"].parent.mkdir(parents=True)
    failed_paths["log"].write_text("starting\nerror: imagenet-v2: no class folders under /x\n\n")
    failed_paths["error"].write_text(json.dumps({"hash": failed.hash, "step": "eval.py", "returncode": 2,
                                                 "last_line": "error: imagenet-v2: no class folders under /x"}))
    assert [cell_state(c, out)[0] for c in manifest.cells()] == ["done", "stale", "failed", "missing"]
    rows = status_rows(manifest)
    assert rows[2][3] == "eval.py exit 2: error: imagenet-v2: no class folders under /x"
    assert main(["status", str(manifest.path)]) == 0
    printed = capsys.readouterr().out
    assert "1 done, 1 missing, 1 failed, 1 stale" in printed and [r[2] for r in rows] == list(STATES_IN_ORDER)
    assert [line.split()[:2] for line in printed.splitlines()[1:5]] == [
        ["resnet10t/imagenet-v2", "done"], ["resnet10t/imagenet-a", "stale"], ["resnet14t/imagenet-v2", "failed"],
        ["resnet14t/imagenet-a", "missing"]]
    # the report reads the same files: the done cell's number, the stale one's too (it is a result), no others
    assert report_main(["--results", str(out), "--out", str(tmp_path / "report")]) == 0
    csv = (tmp_path / "report" / "report.csv").read_text().splitlines()
    header = csv[0].split(",")
    table = {line.split(",")[0]: dict(zip(header, line.split(","))) for line in csv[1:]}
    assert table["resnet10t"]["imagenet_v2_top1"] == "61.5" and table["resnet10t"]["imagenet_a_top1"] == "3.5"
    assert "resnet14t" not in table  # a failed / missing cell writes no result file


# --------------------------------------------------------------------------------------------------
# SLURM plan
# --------------------------------------------------------------------------------------------------
def test_slurm_plan_groups_by_resources_chunks_and_drops_done_cells(tmp_path, capsys):
    path = _manifest(tmp_path, models=["resnet10t", "resnet14t", "resnet18"],
                     evaluations={"imagenet-v2": None, "imagenet-a": None,
                                  "cityscapes-deeplabv3": {"resources": {"gpus": 4, "cpus": 16, "mem_gb": 64,
                                                                         "time_min": 600}}},
                     slurm={"partition": "gpu", "max_array_size": 4, "array_parallelism": 3})
    manifest = load_manifest(path)
    cells = manifest.cells()
    _fake_result(cells[0], Path(manifest.out), 10.0)  # resnet10t/imagenet-v2 is done
    assert main(["run", str(path), "--launcher", "slurm"]) == 0
    printed = capsys.readouterr()
    assert "8 cell(s) to run in 3 job array(s) (partition gpu; max array size 4)" in printed.out
    assert "1 of 9 cells done already, not submitted" in printed.out and "dry run: add --submit" in printed.out
    assert "resnet10t/imagenet-v2\n" not in printed.out and "warning: data" in printed.err
    todo = [c for c in cells if c.key != cells[0].key]
    plan = plan_slurm(todo, "t", "cuda", max_array_size=4, parallelism=3)
    sizes = [(a["gpus_per_node"], a["tasks_per_node"], len(a["cells"]), a["array_parallelism"]) for a in plan["arrays"]]
    assert sizes == [(1, 1, 4, 3), (1, 1, 1, 1), (4, 4, 3, 3)]  # 5 one-GPU cells cut at 4; segmentation: 4 tasks
    assert plan["arrays"][2]["cpus_per_task"] == 4 and plan["arrays"][2]["timeout_min"] == 600
    assert format_plan(plan, "gpu").count("    resnet") == 8
    assert not (Path(manifest.out) / ".suite").exists()  # a dry run stores nothing


def test_shipped_manifests_load_and_table4_plans_the_papers_matrix(tmp_path, capsys):
    table4 = REPO / "configs" / "suite" / "table4.yaml"
    assert main(["run", str(table4), "--launcher", "slurm", "--partition", "gpu", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "SLURM plan for table4: 16 cell(s) to run in 3 job array(s) (partition gpu; max array size 1000)" in printed
    assert "8 task(s), 8 at a time; per task 1 GPU(s), 1 process(es), 8 CPUs, 32 GB, 60 min" in printed
    assert "4 task(s), 4 at a time; per task 8 GPU(s), 1 process(es), 64 CPUs, 256 GB, 1440 min" in printed
    assert "4 task(s), 4 at a time; per task 4 GPU(s), 4 process(es), 32 CPUs, 128 GB, 1440 min" in printed
    manifest = load_manifest(table4)
    assert [m["name"] for m in manifest.models] == ["genas_c100", "genas_af_c100", "dropnas", "sdarts_adv"]
    assert list(manifest.evaluations) == ["imagenet-v2", "imagenet-a", "coco-retinanet", "cityscapes-deeplabv3"]
    robustness = load_manifest(REPO / "configs" / "suite" / "robustness.yaml")
    assert sorted(robustness.evaluations) == sorted(e for e in EVALUATIONS if e.startswith("imagenet"))
    smoke = load_manifest(REPO / "configs" / "suite" / "smoke.yaml")
    assert sorted(smoke.evaluations) == sorted(set(EVALUATIONS) - {"imagenet-c"}) and len(smoke.cells()) == 18
    assert smoke.data_root == str((REPO.parent / "shared" / "data").resolve())  # relative to the repository
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------
# Real cells: a run, a failure, status, resume (locally and through submitit's local executor)
# --------------------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "suite", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def test_run_resume_failure_and_status_end_to_end(tmp_path, capsys):
    """The first run as a user types it (a subprocess); status and the re-runs through the same ``main``."""
    tiny = shared_path("imagenet_tiny")
    evaluations = {"imagenet-a": dict(CHEAP, data="imagenet-a"),
                   # ImageNet-R's 200 wnid folders are not in the V2 release: the cell fails, the run goes on
                   "imagenet-r": dict(CHEAP, data="imagenet-v2")}
    path = _manifest(tmp_path, evaluations=evaluations)
    first = _cli("run", str(path), "--device", "cpu", "--data-root", str(tiny))
    assert first.returncode == 1, first.stdout + first.stderr
    assert "done   resnet10t/imagenet-a" in first.stdout and "failed resnet10t/imagenet-r" in first.stdout
    assert "1 cell(s) done, 1 failed, 0 done before" in first.stdout
    out = tmp_path / "out"
    result = read_result(out / "resnet10t" / "imagenet-a.json")
    assert result["model"] == "resnet10t" and result["meta"]["set"] == "imagenet-a"
    assert result["meta"]["num_images"] == 200 and 0 <= result["metrics"]["top1"] <= 100
    assert result["meta"]["data_config"]["input_size"] == [3, 32, 32]
    assert not list((out / ".work").rglob("*.json"))  # the command line's own result file was moved, not copied
    error = json.loads((out / "resnet10t" / "imagenet-r.error").read_text())
    assert error["returncode"] == 2 and error["last_line"].startswith("error: ") and "imagenet-r" in error["last_line"]

    run = ["run", str(path), "--device", "cpu", "--data-root", str(tiny), "--no-progress"]
    assert main(["status", str(path), "--data-root", str(tiny)]) == 0
    status = capsys.readouterr().out
    assert "resnet10t/imagenet-a  done" in status and "1 done, 0 missing, 1 failed, 0 stale" in status
    assert f"failed   eval.py exit 2: {error['last_line']}" in status

    # fix the failing cell: only it runs; a third run does nothing; a deleted result: only that cell runs
    mtime = (out / "resnet10t" / "imagenet-a.json").stat().st_mtime_ns
    evaluations["imagenet-r"]["data"] = "imagenet-r"
    path = _manifest(tmp_path, evaluations=evaluations)
    assert main(run) == 0
    second = capsys.readouterr().out
    assert "1 of 2 cells to run" in second and "done   resnet10t/imagenet-r" in second
    assert (out / "resnet10t" / "imagenet-a.json").stat().st_mtime_ns == mtime
    assert not (out / "resnet10t" / "imagenet-r.error").exists()
    assert read_result(out / "resnet10t" / "imagenet-r.json")["meta"]["num_images"] == 200
    assert main(run) == 0
    assert "all 2 cells done" in capsys.readouterr().out
    # a deleted result: only that cell runs, here through the SLURM launcher on submitit's local executor
    r_mtime = (out / "resnet10t" / "imagenet-r.json").stat().st_mtime_ns
    (out / "resnet10t" / "imagenet-a.json").unlink()
    slurm = ["run", str(path), "--launcher", "slurm", "--device", "cpu", "--data-root", str(tiny)]
    assert main(slurm + ["--submit", "--cluster", "local"]) == 0
    fourth = capsys.readouterr().out
    assert "1 cell(s) to run in 1 job array(s)" in fourth and "submitted 1 job(s) to local" in fourth
    assert "1 of 2 cells done already, not submitted" in fourth and "    resnet10t/imagenet-a\n" in fourth
    assert (out / "resnet10t" / "imagenet-r.json").stat().st_mtime_ns == r_mtime
    manifest = load_manifest(path, data_root=str(tiny))
    cell = manifest.cells()[0]
    jobs = read_jobs(out)
    assert set(jobs) == {"resnet10t/imagenet-a"} and jobs[cell.key]["hash"] == cell.hash
    plans = list((out / ".suite").glob("plan-*.json"))
    assert len(plans) == 1 and json.loads(plans[0].read_text())["arrays"][0]["job_ids"] == [jobs[cell.key]["job_id"]]
    assert read_result(out / "resnet10t" / "imagenet-a.json")["meta"]["suite"]["hash"] == cell.hash
    log = (out / "resnet10t" / "imagenet-a.log").read_text()
    assert log.count("## ") == 2 and "robustness/eval.py --set imagenet-a" in log  # two attempts, appended
    assert [r[2] for r in status_rows(manifest)] == ["done", "done"]
    # nothing is left to submit: the finished cells are dropped from the plan
    assert main(slurm + ["--submit", "--cluster", "local"]) == 0
    assert "0 cell(s) to run in 0 job array(s)" in capsys.readouterr().out
