#!/usr/bin/env bash
# The test suite (`npm test`), run after scripts/setup.sh has built the package:
#   test/unit    needs no addon          test/native  the CPU addon
#   test/gpu     skips itself without CUDA
# plus the CUDA compile check when nvcc is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f dist/lib/index.js ] || ! ls build/Release/*.node >/dev/null 2>&1; then
  echo "test: the package is not built; run scripts/setup.sh (or npm run build) first" >&2
  exit 1
fi
scripts/cuda-compile-check.sh
log=$(mktemp)
status=0
shopt -s globstar nullglob
files=(dist/test/unit/**/*.test.js dist/test/native/**/*.test.js dist/test/gpu/**/*.test.js)
npx tap --reporter=tap "${files[@]}" "$@" | tee "$log" || status=$?
# A plain closing line for CI, from tap's final "# { total: N, pass: N, fail: N, skip: N }".
summary=$(grep -E '^# \{ total:' "$log" | tail -n 1)
rm -f "$log"
count() { echo "$summary" | grep -oE "$1: [0-9]+" | grep -oE '[0-9]+' || echo 0; }
echo "$(count pass) passed, $(count fail) failed, $(count skip) skipped"
exit $status
