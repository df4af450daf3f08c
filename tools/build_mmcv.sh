#!/usr/bin/env bash
# Build mmcv (the OpenMMLab fork, onedl-mmcv) with its compiled ops against a venv's torch, once per
# (mmcv, torch, Python, CPU/CUDA) combination, and cache the wheel outside the repository: later installs take seconds.
# Usage: tools/build_mmcv.sh VENV_PYTHON   (progress on stderr; the wheel's path on stdout, its last line)
# Environment: MMCV_VERSION (2.3.6), GOL_NB_WHEEL_CACHE (~/.cache/gol_nb/wheels), MAX_JOBS (the CPU count),
# FORCE_CUDA=1 (build the CUDA ops; default: only where nvidia-smi sees a GPU and torch has CUDA).
# `make install` calls it; the Makefile then gives pip the wheel by path, so pip never builds mmcv from its sdist.
set -euo pipefail
PY=${1:?usage: tools/build_mmcv.sh VENV_PYTHON}
# absolute (the build runs in another folder), without resolving the venv's symlink (that would leave the venv)
PY="$(cd "$(dirname "$PY")" && pwd -L)/$(basename "$PY")"
MMCV_VERSION=${MMCV_VERSION:-2.3.6}
CACHE=${GOL_NB_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gol_nb/wheels}
TORCH=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
PYV=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
CUDA=${FORCE_CUDA:-0}
if [ "$CUDA" = 0 ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
   && "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then CUDA=1; fi
KEY="mmcv-${MMCV_VERSION}_torch-${TORCH}_${PYV}_$( [ "$CUDA" = 1 ] && echo cuda || echo cpu )"
DEST="$CACHE/$KEY"
mkdir -p "$DEST"
WHEEL=$(ls "$DEST"/*.whl 2>/dev/null | head -1 || true)
if [ -n "$WHEEL" ]; then echo "mmcv: cached wheel $WHEEL" >&2; echo "$WHEEL"; exit 0; fi

JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}
echo "mmcv: building $MMCV_VERSION with ops for torch $TORCH ($PYV, cuda=$CUDA, $JOBS jobs): 10-45 min on 2 cores," \
     "once; the wheel is cached in $DEST" >&2
START=$(date +%s)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip install -q 'setuptools>=77,<81' ninja wheel >&2
"$PY" -m pip download -q --no-deps --no-binary :all: "onedl-mmcv==$MMCV_VERSION" -d "$WORK" >&2
tar -xzf "$WORK"/*.tar.gz -C "$WORK"
SRC=$(find "$WORK" -maxdepth 1 -mindepth 1 -type d | head -1)
# torch >= 2.10's headers need C++20; mmcv's setup.py asks for C++17.
sed -i 's/c++17/c++20/g' "$SRC/setup.py"
# Built from outside the source folder (its mmcv/ would shadow an installed mmcv), without build isolation (the
# build needs this venv's torch).
(cd "$WORK" && MMCV_WITH_OPS=1 FORCE_CUDA=$CUDA MAX_JOBS=$JOBS \
    "$PY" -m pip wheel -q --no-deps --no-build-isolation "$SRC" -w "$WORK/out" >&2)
# Copied under a temporary name, then renamed: a killed build never leaves a half-written wheel in the cache.
BUILT=$(ls "$WORK"/out/*.whl | head -1)
cp "$BUILT" "$DEST/.partial" && mv "$DEST/.partial" "$DEST/$(basename "$BUILT")"
echo "mmcv: built in $(( ($(date +%s) - START) / 60 )) min: $DEST/$(basename "$BUILT")" >&2
echo "$DEST/$(basename "$BUILT")"
