#!/usr/bin/env bash
# Every GPU figure in one command: the bench extra with CUDA wheels, then
# `python -m benchmarks.all --device=gpu` (the table in benchmarks/results/gpu.md).
#
#   bash benchmarks/gpu.sh [flags of benchmarks.all, e.g. --out=/tmp/gpu.md --only=hvp_cost]
#
# PyPI's torch wheels for Linux are CUDA builds; jax[cuda12] brings CUDA jaxlib.
# On a machine without network whose image already has CUDA jax and torch, set
# GRADLAB_NO_INSTALL=1 (nothing is installed) or GRADLAB_WHEELS=DIR (the peers'
# wheels, installed from DIR alone, without touching what is there).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [[ -n "${GRADLAB_WHEELS:-}" ]]; then
  "$python" -m pip install -q --no-index --no-deps "$GRADLAB_WHEELS"/*.whl
elif [[ -z "${GRADLAB_NO_INSTALL:-}" ]]; then
  "$python" -m pip install -q -e ".[bench]" "jax[cuda12]"
fi
exec "$python" -m benchmarks.all --device=gpu "$@"
