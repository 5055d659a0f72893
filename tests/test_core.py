"""genas.core plumbing: file modes of atomic writes, the one usage-error path of every CLI, one table of
defaults, and the abstract parts of a search space."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from genas.core import config, distributed, errors, io
from genas.evolution import SearchSettings
from genas.scoring.perturbation import PerturbationConfig
from genas.spaces.base import SearchSpace


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
        written = [io.atomic_write_text(tmp_path / "a.txt", "x"), io.atomic_write_json(tmp_path / "a.json", {}),
                   io.atomic_torch_save({"w": torch.zeros(1)}, tmp_path / "a.pt")]
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask  # 0644 under umask 022
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == expected
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_usage_errors_print_one_line_and_exit_2(capsys):
    @errors.usage_errors
    def main() -> int:
        raise config.ConfigError("train.lr: expected a number,\ngot 'fast'")
    assert main() == errors.EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert err == "error: train.lr: expected a number, got 'fast'\n"


def test_every_stage_error_is_a_usage_error():
    from genas.core.results import ResultFileError
    from genas.data import DatasetError
    from genas.evolution import StateError
    from genas.nb201_eval import EvalError
    from genas.search import SearchCLIError
    from genas.train_supernet import RunExistsError
    for cls in (config.ConfigError, ResultFileError, DatasetError, StateError, EvalError, SearchCLIError,
                RunExistsError):
        assert issubclass(cls, errors.UsageError), cls


def test_defaults_live_in_the_config_table():
    search, score = config.DEFAULTS["search"], config.DEFAULTS["score"]
    settings = SearchSettings()
    assert (settings.population, settings.topk, settings.mutation_num, settings.crossover_num) == (
        search["population"], search["topk"], search["mutation_num"], search["crossover_num"]) == (100, 30, 50, 50)
    perturbation = PerturbationConfig(sigmas=(1e-3, 2e-3))
    assert (perturbation.hessian_iters, perturbation.hessian_tol, perturbation.noise) == (
        score["hessian_iters"], score["hessian_tol"], score["noise"])


def test_amp_dtype_table():
    assert distributed.amp_dtype(None) is None
    assert distributed.amp_dtype("bf16") is torch.bfloat16 and distributed.amp_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="score.amp must be"):
        distributed.amp_dtype("fp8", "score.amp")


def test_a_search_space_must_validate():
    class NoValidate(SearchSpace):
        name = "x"
        num_genes = 1

        def sample(self, rng): return (0,)
        def mutate(self, arch, prob, rng): return arch
        def crossover(self, a, b, rng): return a
        def key(self, arch): return str(arch)
        def to_string(self, arch): return str(arch)
        def from_string(self, text): return (0,)
    with pytest.raises(TypeError, match="validate"):
        NoValidate()


def test_search_rejects_a_bad_scorer_option_before_training(tmp_path):
    """--sigmas out of order used to train the supernet for minutes, then die with a traceback."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(REPO / "genas" / "search.py"), "--sigmas", "1e-2,1e-3",
                           "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "sigmas must be strictly increasing" in proc.stderr
    assert not out.exists()
    assert "FutureWarning" not in proc.stderr


def test_resume_treats_options_added_later_as_their_defaults(tmp_path):
    """A run saved before train.lr_schedule existed trained with its default: resuming it is not a change."""
    from genas.train_supernet import RunExistsError, _check_resume_config
    saved = config.load_config(None)
    del saved["train"]["lr_schedule"], saved["supernet"]["affine"]
    _check_resume_config(saved, config.load_config(None), tmp_path / "last.pt")
    with pytest.raises(RunExistsError, match=r"train.lr_schedule: 'per_step' -> 'per_epoch'"):
        _check_resume_config(saved, config.load_config(None, ["train.lr_schedule=per_epoch"]), tmp_path / "last.pt")


@pytest.mark.parametrize("key", ["epochs", "checkpoint_every_steps", "log_every_steps"])
def test_train_counts_must_be_positive(key):
    from genas.train_supernet import check_train_config
    with pytest.raises(config.ConfigError, match=f"train.{key} must be >= 1, got 0"):
        check_train_config(config.load_config(None, [f"train.{key}=0"]))


def test_supernet_options_are_the_config_keys():
    from genas.spaces import SpaceOptionError, build_supernet
    with pytest.raises(SpaceOptionError, match=r"\['in_chans'\] do not apply to the nb201 supernet"):
        build_supernet("nb201", 10, in_chans=3)
