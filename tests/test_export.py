"""backbones.export: timm's hub format (config.json, model.safetensors, README model card) that reloads through
``timm.create_model('local-dir:...', pretrained=True)`` into a model with equal outputs, for a published variant
and for a searched genotype; bad options stop it before anything is written."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import backbones  # noqa: F401  (registers the models)
from backbones.export import ExportError, export, main
from genas.core.results import write_result
from genas.spaces.darts.genotype import Genotype, genotype_to_json


def _checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """A DDP-style training checkpoint (wrapped state dict, ``module.`` prefixes), as the trainers write."""
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def _equal_outputs(a: torch.nn.Module, b: torch.nn.Module, size: int) -> bool:
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_published_variant_round_trips_with_its_model_card(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("genas_c100").eval()
    with torch.no_grad():  # non-trivial BN statistics, so the buffers' round trip matters
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ckpt = _checkpoint(source, tmp_path / "model_best.pth")
    runs = tmp_path / "runs"
    write_result(runs / "a.json", "robustness", "genas_c100", {"top1": 5.65, "top5": 20.25, "ece": 7.5},
                 set="imagenet-a")
    write_result(runs / "other.json", "robustness", "darts_v2", {"top1": 4.0}, set="imagenet-a")  # not this model
    out = tmp_path / "hub" / "genas_c100"
    assert main(["--model", "genas_c100", "--checkpoint", str(ckpt), "--out", str(out), "--results", str(runs)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o666 & ~umask}  # as plain files
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "genas_c100" and config["num_classes"] == 1000
    assert config["model_args"] == {"num_classes": 1000, "in_chans": 3, "global_pool": "avg"}
    assert config["pretrained_cfg"]["mean"] == [0.0, 0.0, 0.0] and config["pretrained_cfg"]["input_size"] == [3, 224, 224]
    weights = load_file(out / "model.safetensors")
    assert set(weights) == set(source.state_dict()) and all(torch.equal(weights[k], v)
                                                            for k, v in source.state_dict().items())

    reloaded = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert _equal_outputs(source, reloaded, 224)
    card = (out / "README.md").read_text()
    assert "library_name: timm" in card and f'timm.create_model("local-dir:genas_c100"' in card
    assert "params: 5.195 M" in card and "MACs: 0.579 G at 224x224" in card  # 5,195,172 params (test_backbones)
    assert "| robustness | imagenet-a | top1 | 5.65 | `a.json` |" in card and "| ece | 7.50 |" in card
    assert "4.00" not in card
    # a result naming another checkpoint's sha256 is not this model's, whatever its model name
    write_result(runs / "other_weights.json", "robustness", "genas_c100", {"top1": 9.99}, set="imagenet-v2",
                 checkpoint_sha256="0" * 64)
    export("genas_c100", ckpt, tmp_path / "hub2", results=[runs, runs / "."])  # overlapping folders: each file once
    card2 = (tmp_path / "hub2" / "README.md").read_text()
    assert "9.99" not in card2 and card2.count("`a.json`") == 3  # a.json's three metrics, listed once each
    from backbones.names import ModelNameError, check_model_name
    assert check_model_name(f"local-dir:{out}") == f"local-dir:{out}"  # the exported folder is a model name
    with pytest.raises(ModelNameError, match="config.json not found"):
        check_model_name(f"local-dir:{tmp_path / 'nowhere'}")


def test_searched_genotype_round_trips(tmp_path):
    searched = Genotype(  # a cell none of the published ones is (what genas/search.py writes)
        normal=[("sep_conv_3x3", 0), ("dil_conv_3x3", 1), ("max_pool_3x3", 0), ("skip_connect", 2),
                ("sep_conv_5x5", 1), ("avg_pool_3x3", 3), ("dil_conv_5x5", 2), ("sep_conv_3x3", 4)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("dil_conv_5x5", 0),
                ("avg_pool_3x3", 1), ("sep_conv_5x5", 3), ("skip_connect", 2), ("dil_conv_3x3", 4)],
        reduce_concat=[2, 3, 4, 5])
    genotype_file = tmp_path / "best_genotype.json"
    genotype_file.write_text(json.dumps(genotype_to_json(searched)))
    torch.manual_seed(0)
    source = timm.create_model("darts_cifar", genotype=str(genotype_file), C=8, layers=5, num_classes=100)
    ckpt = _checkpoint(source, tmp_path / "cifar.pth")
    out = export("darts_cifar", ckpt, tmp_path / "hub" / "mine", genotype=str(genotype_file), C=8, layers=5)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "darts_cifar" and config["num_classes"] == 100  # the checkpoint's classes
    assert config["model_args"]["C"] == 8 and config["model_args"]["layers"] == 5
    assert config["model_args"]["genotype"] == genotype_to_json(searched)  # the cell itself, not the file's path
    genotype_file.unlink()  # the hub folder stands alone
    reloaded = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert reloaded.genotype == searched and reloaded.num_classes == 100
    assert _equal_outputs(source, reloaded, 32)
    assert "None found" in (out / "README.md").read_text()


def test_bad_exports_write_nothing(tmp_path, capsys):
    ckpt = _checkpoint(timm.create_model("darts_cifar", C=4, layers=5), tmp_path / "c.pth")
    out = tmp_path / "hub"
    assert main(["--model", "genas_c100", "--genotype", "darts_v2", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --genotype, --C and --layers are for the generic") and err.count("\n") == 1
    assert main(["--model", "resnet18", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    assert "not a GeNAS / DARTS model" in capsys.readouterr().err
    assert main(["--model", "darts_cifar", "--checkpoint", str(tmp_path / "none.pth"), "--out", str(out)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    for bad, content in (("garbage.pth", b"not a pickle"), ("list.pth", None)):
        path = tmp_path / bad
        path.write_bytes(content) if content else torch.save([1, 2], path)
        assert main(["--model", "darts_cifar", "--checkpoint", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("cannot read checkpoint" in err or "not a state dict" in err), err
        path.unlink()
    with pytest.raises(ExportError, match="cannot load checkpoint"):  # wrong cell for these weights
        export("darts_cifar", ckpt, out, genotype="darts_v2", C=4, layers=5)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["c.pth"]  # no temporary folder left
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ExportError, match="exists and is not an empty folder; pass --overwrite"):
        export("darts_cifar", ckpt, out, C=4, layers=5)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    export("darts_cifar", ckpt, out, C=4, layers=5, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
