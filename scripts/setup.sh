#!/usr/bin/env bash
# Installs what wan-native needs to build and test, then builds it. Safe to run again: it
# installs only what is missing and rebuilds only what changed.
#   Debian/Ubuntu: installs packages with apt (as root, or through sudo).
#   Elsewhere:     says what is missing; libtorch can come from WAN_LIBTORCH (an unpacked
#                  libtorch) or an installed Python torch package.
set -euo pipefail
cd "$(dirname "$0")/.."

# libopenblas0-pthread: without it Debian's libtorch multiplies matrices at ~5 GFLOP/s
# instead of ~150 (shared/spec/native-notes.md).
# sentencepiece: spm_train and spm_encode, which the tokenizer tests use as the reference.
packages=(libtorch-dev libopenblas0-pthread cmake ninja-build g++ ccache sentencepiece ffmpeg)

if [ -r /etc/debian_version ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
else
  problems=()
  command -v cmake >/dev/null || problems+=("cmake >= 3.18")
  command -v c++ >/dev/null || problems+=("a C++17 compiler (g++ or clang++)")
  if [ -z "${WAN_LIBTORCH:-}" ] && ! python3 -c 'import torch' 2>/dev/null; then
    problems+=("libtorch: set WAN_LIBTORCH to an unpacked libtorch, or pip install torch")
  fi
  if [ ${#problems[@]} -gt 0 ]; then
    echo "setup: this is not Debian, so nothing was installed. Missing:" >&2
    printf '  - %s\n' "${problems[@]}" >&2
    exit 1
  fi
fi

node -e 'const [a,b]=process.versions.node.split(".").map(Number); if (a<20||(a===20&&b<17)) { console.error("setup: Node >= 20.17 is needed, found "+process.version); process.exit(1) }'

# npm ci only when the lock file changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || ! cmp -s <(node -p 'JSON.stringify(require("./package-lock.json").packages)') \
    <(node -p 'JSON.stringify(require("./node_modules/.package-lock.json").packages)' 2>/dev/null); then
  npm ci --no-audit --no-fund
fi

npm run build
