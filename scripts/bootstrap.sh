#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) from pinned requirements.
#
#   scripts/bootstrap.sh core   # search + backbones + robustness (torch, timm, ...)
#   scripts/bootstrap.sh all    # core + Detectron2 + MMSegmentation with compiled mmcv ops
#
# Idempotent: a stamp keyed by the requirement files and this script skips work that is done.
# mmcv 2.1.0 has no cp311 CPU wheel on the registry, so it is built once from its sdist (with the
# C++ standard fixed for torch 2.14's headers) and cached under $GENAS_WHEEL_CACHE.
set -euo pipefail

target="${1:-all}"
case "$target" in core|all) ;; *) echo "usage: $0 core|all" >&2; exit 2;; esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GENAS_VENV:-$root/.venv}"
case "$venv" in /*) ;; *) venv="$PWD/$venv";; esac  # absolute: the mmcv build runs in another folder
python_bin="${PYTHON:-python3}"
cache="${GENAS_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/genas/wheels}"

MMCV_VERSION=2.1.0
D2_VERSION=0.7.2

stamp_of() {  # hash of everything that decides the content of the environment
    { echo "$1"; cat "$root/scripts/bootstrap.sh" "$root/pyproject.toml"; } | sha256sum | cut -c1-16
}
stamp_file="$venv/.genas-stamp-$target-$(stamp_of "$target")"
if [ -f "$stamp_file" ]; then
    exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
    "$python_bin" - <<'PY' || { echo "error: Python 3.10-3.12 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)
PY
    echo "[bootstrap] creating $venv"
    "$python_bin" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install -U pip "setuptools<81" wheel

echo "[bootstrap] installing the project and its core requirements (pyproject.toml)"
"${pip[@]}" install --no-build-isolation -e "$root[test]"

if [ "$target" = all ]; then
    mkdir -p "$cache"
    torch_version="$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"
    pyver="$("$venv/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"

    # mmcv with compiled ops, built once per (mmcv, torch, python) and cached.
    mmcv_dir="$cache/mmcv-$MMCV_VERSION-torch$torch_version-$pyver"
    if ! ls "$mmcv_dir"/mmcv-*.whl >/dev/null 2>&1; then
        echo "[bootstrap] building mmcv $MMCV_VERSION with ops for torch $torch_version (about 10 min on 2 cores, once)"
        work="$(mktemp -d)"
        trap 'rm -rf "$work"' EXIT
        "${pip[@]}" download --no-deps --no-build-isolation --no-binary :all: "mmcv==$MMCV_VERSION" -d "$work"
        tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
        # torch >= 2.14 headers need C++20; mmcv's setup.py pins -std=c++17 and the last -std wins.
        sed -i 's/-std=c++17/-std=c++20/g' "$work/mmcv-$MMCV_VERSION/setup.py"
        (cd "$work/mmcv-$MMCV_VERSION" && CUDA_VISIBLE_DEVICES= FORCE_CUDA= MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-2}" \
            "$venv/bin/python" -m pip --disable-pip-version-check -q wheel --no-deps --no-build-isolation . -w "$work/dist")
        mkdir -p "$mmcv_dir.tmp" && mv "$work"/dist/mmcv-*.whl "$mmcv_dir.tmp/" && mv "$mmcv_dir.tmp" "$mmcv_dir"
    fi
    echo "[bootstrap] installing detection + segmentation requirements"
    "${pip[@]}" install --no-build-isolation --find-links "$mmcv_dir" -e "$root[all,test]"

    # Detectron2: the registry's sal-detectron2 is a pure-Python-usable cp310 wheel; retag and install
    # without its numpy<2 pin (its real imports are the `detection` extra of pyproject.toml).
    d2_dir="$cache/sal-detectron2-$D2_VERSION"
    if ! ls "$d2_dir"/*.whl >/dev/null 2>&1; then
        work_d2="$(mktemp -d)"
        "${pip[@]}" download --no-deps --only-binary=:all: --python-version 3.10 "sal-detectron2==$D2_VERSION" -d "$work_d2"
        src="$(ls "$work_d2"/sal_detectron2-*.whl)"
        mkdir -p "$d2_dir.tmp"
        cp "$src" "$d2_dir.tmp/sal_detectron2-$D2_VERSION-py3-none-any.whl"
        mv "$d2_dir.tmp" "$d2_dir"; rm -rf "$work_d2"
    fi
    "${pip[@]}" install --no-deps "$d2_dir"/*.whl
fi

if [ "$target" = all ]; then
    "$venv/bin/python" -c 'import detectron2, mmseg.models, mmcv.ops' \
        || { echo "error: detectron2 / mmseg / mmcv.ops do not import in $venv" >&2; exit 1; }
fi
rm -f "$venv"/.genas-stamp-"$target"-*
touch "$stamp_file"
if [ "$target" = all ]; then  # everything core needs is there too
    rm -f "$venv"/.genas-stamp-core-*; touch "$venv/.genas-stamp-core-$(stamp_of core)"
fi
echo "[bootstrap] environment ready: $venv ($target)"
