#!/usr/bin/env bash
# The GPU check: on a machine whose Python has jax with CUDA but not the rest
# of the stack, installs dm-haiku (with jmp and tabulate), ml-collections and
# dm-pix (from the wheels `make gpu_wheels` downloads into .whl/, or from
# PyPI), puts the project on the path (no TensorFlow needed: synthetic
# batches), prints the versions and runs experiments/gpu_check.py: the
# ResNet-50 224 px BYOL step, BN and GN+WS, bfloat16 and float32, within a
# budget (default 420 s; about 8 min in all).
#
#   bash experiments/gpu_check.sh [--budget_s=420] [--per_device_batch=256]
#   PYTHON=.venv/bin/python bash experiments/gpu_check.sh --per_device_batch=2 \
#       --steps=1 --windows=1     # a CPU smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
site=${SITE:-/tmp/byol_site}
# The names of the Makefile's GPU_WHEELS (tests/test_gpu_check.py holds them
# equal); --no-deps, or pip would put a CPU jax over the image's CUDA one.
needed="dm-haiku jmp tabulate ml-collections dm-pix"
if ! "$python" -c "import haiku, ml_collections, dm_pix" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
  else
    "$python" -m pip install -q --no-deps --no-compile --target "$site" $needed
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$python" -m experiments.gpu_check "$@"
