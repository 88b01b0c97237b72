#!/usr/bin/env bash
# Download, where pip reaches PyPI, the wheels bench/gpu.sh installs on a GPU machine without network.
# That machine has torch, torchvision, timm, h5py, typer, rich, pyarrow, pandas and pytest; gcctl also needs
# open_clip_torch (and ftfy, wcwidth); DVC is the pipeline's optional extra, not needed there. TorchCodec (the
# `decode` extra: `gcctl extract --decode torchcodec`) is a binary wheel for that machine's CPython and torch
# (torchcodec 0.16 is the release built for torch 2.11). The others are pure-Python wheels, the versions gcctl
# is tested with. Usage: bench/prepare_wheels.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl}
python=${PYTHON:-python3}
wheels=(
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0
)
rm -rf "$dir" && mkdir -p "$dir"
# --no-deps: the machine has the heavy dependencies (torch...) already; one version of each wheel only.
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "${GPU_PYTHON_VERSION:-3.12}" \
  --implementation py --dest "$dir" "${wheels[@]}"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "${GPU_PYTHON_VERSION:-3.12}" \
  --implementation cp --platform manylinux_2_28_x86_64 --dest "$dir" "torchcodec==${GPU_TORCHCODEC_VERSION:-0.16.0}"
echo "$(ls "$dir" | wc -l) wheels in $dir ($(du -sh "$dir" | cut -f1)); bring $dir/ along with the checkout and run bench/gpu.sh"
