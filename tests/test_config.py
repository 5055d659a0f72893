"""Config loading: defaults, YAML merge, dotted overrides, per-space supernet keys and clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from genas.core.config import DEFAULTS, ConfigError, load_config, parse_override

REPO = Path(__file__).resolve().parents[1]
SUPERNET_CONFIGS = sorted((REPO / "configs" / "supernet").glob("*.yaml"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_no_file_gives_the_defaults():
    assert load_config(None) == DEFAULTS
    assert load_config(None)["score"]["sigmas"] == [0.002, 0.01, 0.02]
    assert load_config(None)["search"]["population"] == 100


def test_file_then_overrides_take_precedence(tmp_path):
    path = _write(tmp_path, "train:\n  epochs: 7\n  weight_decay: 3e-4\n  lr: 1\ndata: {name: cifar10, root: /x}\n")
    cfg = load_config(path, ["train.epochs=3", "score.sigmas=[1e-5, 5e-5, 1e-4]", "search.max_params=5.5"])
    assert cfg["train"]["epochs"] == 3
    assert cfg["train"]["weight_decay"] == 3e-4  # YAML 1.1 alone would read "3e-4" as a string
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)
    assert cfg["data"] == {**DEFAULTS["data"], "name": "cifar10", "root": "/x"}
    assert cfg["score"]["sigmas"] == [1e-5, 5e-5, 1e-4]
    assert cfg["search"]["max_params"] == 5.5
    assert cfg["train"]["batch_size"] == DEFAULTS["train"]["batch_size"]  # untouched keys keep their default


def test_supernet_section_follows_the_space(tmp_path):
    darts = {"C": 16, "layers": 8, "affine": True, "pool_bn": False}
    assert load_config(None, ["space=darts"])["supernet"] == darts
    assert load_config(_write(tmp_path, "space: darts\nsupernet: {C: 8}\n"))["supernet"] == {**darts, "C": 8}
    with pytest.raises(ConfigError, match=r"unknown config key 'supernet.N'.*known keys in 'supernet': C, layers"):
        load_config(None, ["space=darts", "supernet.N=2"])


@pytest.mark.parametrize("text, message", [
    ("train:\n  epoch: 3\n", r"run.yaml: unknown config key 'train.epoch'"),
    ("trian: {epochs: 3}\n", r"unknown config key 'trian'"),
    ("train: 3\n", r"train must be a mapping"),
    ("train: {epochs: three}\n", r"train.epochs must be of type int"),
    ("train: {random_labels: 1}\n", r"train.random_labels must be of type bool"),
    ("data: {name: mnist}\n", r"data.name must be one of \['digits', 'cifar10'"),
    ("score: {sigmas: [0.1, x]}\n", r"score.sigmas\[1\] must be of type float"),
    ("- a\n- b\n", r"top level must be a mapping"),
    ("train: {epochs: [1\n", r"not valid YAML"),
])
def test_bad_files_name_the_key_and_the_file(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text))


def test_bad_overrides():
    with pytest.raises(ConfigError, match=r"override 'train.epochs' is not of the form"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match=r"override 'train.amp=fp8': train.amp must be one of"):
        load_config(None, ["train.amp=fp8"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/run.yaml")
    assert parse_override("data.root=null") == (["data", "root"], None)
    assert parse_override("train.amp=bf16") == (["train", "amp"], "bf16")


def test_shipped_supernet_configs_follow_the_paper():
    names = [p.name for p in SUPERNET_CONFIGS]
    assert names == ["darts_cifar10.yaml", "darts_cifar100.yaml", "nb201_cifar10.yaml", "nb201_cifar100.yaml",
                     "nb201_digits.yaml", "nb201_imagenet16.yaml"]
    cfgs = {p.stem: load_config(p) for p in SUPERNET_CONFIGS}
    for name, cfg in cfgs.items():
        train = cfg["train"]
        assert (train["lr_min"], train["momentum"], train["grad_clip"]) == (0.001, 0.9, 5.0)
        assert train["weight_decay"] == (3e-4 if cfg["space"] == "darts" else 5e-4), name
        if name != "nb201_digits":
            assert (train["epochs"], train["batch_size"], train["lr"], cfg["supernet"]["C"]) == (250, 64, 0.025, 16)
    digits = cfgs["nb201_digits"]["train"]  # the CPU demo: more, smaller steps on 898 images
    assert (digits["epochs"], digits["batch_size"], digits["lr"], digits["workers"]) == (50, 32, 0.05, 0)
    assert cfgs["darts_cifar10"]["supernet"] == {"C": 16, "layers": 8, "affine": True, "pool_bn": False}
    assert cfgs["darts_cifar10"]["score"]["sigmas"] == [1e-5, 5e-5, 1e-4]
    assert cfgs["darts_cifar100"]["score"]["sigmas"] == [1e-3, 3e-3, 6e-3]
    assert cfgs["darts_cifar100"]["search"]["population"] == 50
    assert cfgs["nb201_cifar10"]["supernet"] == {"C": 16, "N": 5, "affine": True}
    assert cfgs["nb201_imagenet16"]["data"]["name"] == "imagenet16-120"
    assert cfgs["nb201_digits"]["data"]["name"] == "digits"
