#!/usr/bin/env bash
# GPU figures in one JSON (benchmarks/gpu_check.py; README "GPU figures", docs/training.md).
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--out FILE.json]
#
# On the GPU machine, from the repository root, with the wheels of benchmarks/gpu_wheels.sh carried
# in .whl/: they are installed into /tmp/site first (that machine's python3 lacks pydantic, zarr, ...).
# Needs no dvc and no dask. Each section has its own time limit; the whole run stays under 6 minutes.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || echo "gpu_check: installing .whl/ failed; the sections that need those packages will say so" >&2
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
exec timeout 340 "$PYTHON" benchmarks/gpu_check.py "$@"
