#!/usr/bin/env bash
# The GPU check: builds the CUDA backend against the machine's PyTorch (its libtorch and CMake
# config), then runs test/gpu, a few CPU tests on that build, and bench/gpu. For a GPU machine
# with python3 + torch (CUDA), nvcc, cmake and ninja, but perhaps no Node and no network:
# scripts/gpu-pack.sh, run beforehand where Node is, puts what it needs in .device/ (node,
# node_modules, the goldens and manifests), and dist/ must be built (npx tsc).
#
#   bash scripts/gpu-check.sh [quick|fp8|tests]     logs in $OUT (default build-gpu/out)
# quick: a 4-block model in the bench; fp8: test/gpu and the bench's fp8 rows alone; tests:
# test/gpu alone.
# WAN_CHECK_SECONDS (default 580) bounds the whole check: the device tool stops a command after
# 600 s, so the bench and then the CPU tests get what the build and test/gpu leave.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-$root/build-gpu/out}
mkdir -p "$out"
stage() { echo; echo "=== $* ($(date +%T))"; }

if ! command -v node >/dev/null; then
  mkdir -p /tmp/wan-node/bin
  xz -dc .device/node.xz > /tmp/wan-node/bin/node && chmod +x /tmp/wan-node/bin/node
  export PATH=/tmp/wan-node/bin:$PATH
fi
[ -d node_modules ] || tar -xJf .device/nm.tar.xz
[ -d .device/shared ] && export WAN_SHARED_DIR=$root/.device/shared
status=0
budget=${WAN_CHECK_SECONDS:-580}
left() { echo $((budget - SECONDS)); }
export WAN_BENCH_DIR=${WAN_BENCH_DIR:-/tmp/wan-native-bench}
export TAP_TIMEOUT=170  # per test file; node alone would give tap 30 s

stage "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
node --version; nvcc --version | tail -1

if [ -f build-gpu/wan_native.node ] && [ "${WAN_REBUILD:-0}" = 0 ]; then
  echo; echo "=== build: reusing build-gpu/wan_native.node (WAN_REBUILD=1 rebuilds)"
else
  stage "configure"
  prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_JS_INC="$root/node_modules/node-api-headers/include" -DWAN_CUDA_ARCHITECTURES=90 \
    -DWAN_BUILD_TRAIN_DEMO=OFF > "$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
  grep -E "wan-native: Torch|CUDA" "$out/configure.log" | head -5

  stage "build"
  if ! cmake --build build-gpu -- -k 0 > "$out/build.log" 2>&1; then
    grep -E "error|Error" -A3 "$out/build.log" | head -60
    # The fp8 matmul (ops/fp8_matmul.cpp) follows libtorch's newest API: without it, the rest
    # can still be checked.
    echo "--- build failed; again without fp8 matmuls (WAN_FP8_MATMUL=OFF)"
    status=1
    cmake -S . -B build-gpu -DWAN_FP8_MATMUL=OFF >> "$out/configure.log" 2>&1
    cmake --build build-gpu >> "$out/build.log" 2>&1 || { grep -E "error" -A3 "$out/build.log" | tail -30; exit 1; }
  fi
  tail -1 "$out/build.log"
  xz -T0 -3 -c build-gpu/wan_native.node > "$out/wan_native.node.xz"
fi
export WAN_NATIVE_BINARY=$root/build-gpu/wan_native.node

run_test() {  # run_test NAME FILE: its output appended to tests.log, its summary and failures printed
  echo "--- $1" >> "$out/tests.log"
  local limit=$(left); [ "$limit" -gt 180 ] && limit=180
  timeout "$limit" node "$2" > "$out/test.tmp" 2>&1 || status=1
  cat "$out/test.tmp" >> "$out/tests.log"
  echo "$1: $(grep -E '^# \{' "$out/test.tmp" | tail -1)"
  grep -E "^ *not ok" -A12 "$out/test.tmp" | head -40
  rm -f "$out/test.tmp"
}
stage "test/gpu"
for f in dist/test/gpu/*.test.js; do run_test "gpu/$(basename "$f" .test.js)" "$f"; done
grep -E "^ *ok .*(error|diff|cosine|bitwise)" "$out/tests.log" | sed 's/^ *//' | head -90

[ "${1:-}" = tests ] && exit $status

stage "bench/gpu ($(left) s left)"
[ -n "${1:-}" ] && export WAN_GPU_BENCH=$1
limit=$(($(left) - 20)); [ "$limit" -lt 10 ] && limit=10
timeout "$limit" node dist/bench/gpu.js 2> "$out/bench.err" | tee "$out/bench.md" || { status=1; tail -20 "$out/bench.err"; }

# Last, in what time is left: the CPU paths of the CUDA build (dit.test reads the I2V DiT, which
# gpu-pack.sh leaves out).
if [ "${1:-}" != fp8 ]; then
  stage "CPU tests on the CUDA build ($(left) s left)"
  for f in attention adaln vae block-swap quantize; do
    [ "$(left)" -gt 30 ] && run_test "native/$f" "dist/test/native/$f.test.js"
  done
fi
exit $status
