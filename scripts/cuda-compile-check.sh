#!/usr/bin/env bash
# Compiles every csrc/**/*.cu to objects for sm_80 and sm_90 with nvcc, without linking:
# proof on a machine without a GPU (and without a CUDA libtorch) that the kernels build.
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc=$(command -v nvcc || true)
if [ -z "$nvcc" ]; then
  echo "cuda-compile-check: nvcc not found; skipped"
  exit 0
fi
mapfile -t sources < <(find csrc -name '*.cu' | sort)
out=build/cuda-check
mkdir -p "$out"
for src in "${sources[@]}"; do
  obj="$out/$(echo "$src" | tr / _).o"
  "$nvcc" -std=c++17 -O2 -Icsrc --expt-relaxed-constexpr \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -c "$src" -o "$obj"
done
echo "cuda-compile-check: ${#sources[@]} CUDA source(s) compiled for sm_80 and sm_90 with $("$nvcc" --version | grep -o 'release [0-9.]*')"
