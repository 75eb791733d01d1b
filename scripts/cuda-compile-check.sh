#!/usr/bin/env bash
# Compiles every csrc/**/*.cu to objects for sm_80 and sm_90 with nvcc, without linking:
# proof on a machine without a GPU (and without a CUDA libtorch) that the kernels build; then
# checks the C++ under WAN_WITH_CUDA against libtorch's c10/cuda headers (below).
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

# The C++ that only a CUDA build compiles (#ifdef WAN_WITH_CUDA: the kernels' launch glue,
# gpuMemory, the device guards), checked for syntax and types against this libtorch's c10/cuda
# headers, so that a GPU session's build does not fail on what this machine can see. Debian's
# libtorch-dev ships those headers without the generated cuda_cmake_macros.h: a stub stands in.
torch_include=${WAN_LIBTORCH:+$WAN_LIBTORCH/include}
torch_include=${torch_include:-/usr/include}
cuda_include=$(dirname "$(readlink -f "$nvcc")")/../include
[ -f "$cuda_include/cuda_runtime_api.h" ] || cuda_include=$(ls -d /usr/local/cuda*/include 2>/dev/null | head -n 1)
if [ ! -f "$torch_include/c10/cuda/CUDAGuard.h" ] || [ ! -f "$cuda_include/cuda_runtime_api.h" ]; then
  echo "cuda-compile-check: no c10/cuda headers in $torch_include or no CUDA runtime headers; the WAN_WITH_CUDA C++ is not checked"
  exit 0
fi
stub=$out/stub
mkdir -p "$stub/c10/cuda/impl"
[ -f "$torch_include/c10/cuda/impl/cuda_cmake_macros.h" ] || echo '#pragma once' > "$stub/c10/cuda/impl/cuda_cmake_macros.h"
napi_include=$(node -p "require('node-api-headers').include_dir")
mapfile -t glue < <(grep -l 'WAN_WITH_CUDA' $(find csrc -name '*.cpp') | sort)
for src in "${glue[@]}"; do
  g++ -std=c++17 -fsyntax-only -DWAN_WITH_CUDA=1 -DNAPI_VERSION=8 -DNODE_ADDON_API_CPP_EXCEPTIONS \
    -Icsrc -I"$stub" -I"$torch_include" -I"$torch_include/torch/csrc/api/include" -I"$cuda_include" \
    -Inode_modules/node-addon-api -I"$napi_include" "$src"
done
echo "cuda-compile-check: ${#glue[@]} C++ source(s) with WAN_WITH_CUDA checked against $torch_include/c10/cuda"
