#!/usr/bin/env bash
# Download, where pip reaches PyPI, the wheels bench/gpu.sh installs on a GPU machine without network.
# That machine has torch, torchvision, timm, h5py, typer, rich, pyarrow, pandas and pytest; gcctl also needs
# open_clip_torch (and ftfy, wcwidth); DVC is the pipeline's optional extra, not needed there.
# All are pure-Python wheels; the versions are the ones gcctl is tested with. Usage: bench/prepare_wheels.sh [DIR]
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
echo "$(ls "$dir" | wc -l) wheels in $dir ($(du -sh "$dir" | cut -f1)); bring $dir/ along with the checkout and run bench/gpu.sh"
