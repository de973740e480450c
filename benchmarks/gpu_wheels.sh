#!/usr/bin/env bash
# Download into .whl/ the cp312 manylinux wheels that the GPU machine's python3 lacks (or has too old),
# at the versions of requirements-lock.txt, and print their total size: benchmarks/gpu_check.sh installs
# them there. The GPU machine has numpy, torch, onnx, onnxscript, onnxruntime, pyarrow, safetensors,
# filelock, pyyaml and tqdm; it lacks pydantic (+ pydantic_core, annotated-types, typing-inspection,
# a typing_extensions >= 4.16), zarr (+ numcodecs, donfig, google-crc32c) and polars. A device call
# carries at most 64 MiB with the working tree, so polars (about 40 MB, read only by the Parquet cache
# store, which gpu_check does not use) comes only with --with-polars.
#
#   bash benchmarks/gpu_wheels.sh [--with-polars]
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
NAMES=(pydantic pydantic_core annotated-types typing-inspection typing_extensions zarr numcodecs donfig google-crc32c)
if [ "${1:-}" = "--with-polars" ]; then NAMES+=(polars polars-runtime-32); fi
pins=()
for name in "${NAMES[@]}"; do
    pin=$(grep -i -E "^${name}==" requirements-lock.txt || true)
    [ -n "$pin" ] || { echo "gpu_wheels: $name is not in requirements-lock.txt" >&2; exit 1; }
    pins+=("$pin")
done
rm -rf .whl && mkdir -p .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
ls -l .whl | awk 'NR > 1 {printf "  %-70s %6.2f MiB\n", $9, $5 / 1048576}'
du -cb .whl/*.whl | awk 'END {printf "gpu_wheels: %d wheels, %.2f MiB in .whl/ (a device call carries 64 MiB with the tree)\n", NR - 1, $1 / 1048576}'
