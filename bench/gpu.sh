#!/usr/bin/env bash
# One GPU check: the figures only a GPU can show, in under 8 minutes, as one table and bench-gpu.json
# (bench/gpu_check.py says what runs). Usage: bench/gpu.sh [--cpu] [--out FILE]
#
# On a GPU machine without network it first installs what is missing: the wheels in .whl/ (made beforehand
# by bench/prepare_wheels.sh where pip reaches PyPI) into a scratch folder on PYTHONPATH, and gcctl itself with
# `pip install --no-deps -e .`. `--cpu` is the dry mode: it installs nothing and runs in under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ " $* " != *" --cpu "* && " $* " != *" -h "* && " $* " != *" --help "* ]]; then
  if ! "$python" -c "import open_clip, ftfy, torchcodec" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
      # --target, not the environment: the machine's own packages stay as they are.
      site="${TMPDIR:-/tmp}/gcctl-gpu-site"
      "$python" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$site" .whl/*.whl
      export PYTHONPATH="$PYTHONPATH:$site"
    elif "$python" -c "import open_clip, ftfy" 2>/dev/null; then
      echo "warning: torchcodec is missing and .whl/ holds no wheels: the decode check reports --decode torchcodec as unavailable" >&2
    else
      echo "error: open_clip_torch or ftfy is missing and .whl/ holds no wheels; run bench/prepare_wheels.sh where pip reaches PyPI and bring .whl/ along" >&2
      exit 1
    fi
  fi
  # gcctl itself, so its `gcctl` command exists for the tests that run it; imports work from PYTHONPATH anyway.
  "$python" -m pip install --quiet --no-index --no-deps --no-build-isolation -e . \
    || echo "warning: 'pip install --no-deps -e .' failed; gcctl is imported from $PWD through PYTHONPATH" >&2
fi
exec "$python" bench/gpu_check.py "$@"
