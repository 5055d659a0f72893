"""The installed environment: the compiled/retagged extras import, and the core never pulls them in."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

CORE_MODULES = ["genas.search", "genas.train_supernet", "genas.scoring", "genas.nb201_eval", "genas.plots",
                "backbones", "backbones.summary", "backbones.export", "robustness.eval", "report", "report.table",
                "genas.ablation", "genas.spaces.darts.network"]


@pytest.mark.parametrize("module", ["detectron2", "detectron2.modeling", "mmseg.models", "mmcv.ops"])
def test_full_environment_imports(module):
    """`make test` installs Detectron2 and MMSeg with compiled mmcv ops; a missing one is a broken install."""
    importlib.import_module(module)


def test_mmcv_ops_are_compiled():
    from mmcv.utils import ext_loader

    ext = ext_loader.load_ext("_ext", ["nms"])
    assert hasattr(ext, "nms")


def test_core_modules_do_not_import_detection_or_segmentation_stacks():
    code = ("import sys, importlib\n"
            f"for m in {CORE_MODULES!r}: importlib.import_module(m)\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('detectron2', 'mmseg', 'mmcv', 'mmengine'))\n"
            "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
