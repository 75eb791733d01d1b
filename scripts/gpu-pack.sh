#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine that has no Node and no network, into
# .device/ (ignored by git): the node binary and node_modules (xz), and the goldens and manifests
# the tests and bench read. Then: npx tsc -p tsconfig.json, and carry .device and dist.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${WAN_SHARED_DIR:-../shared}
mkdir -p .device/shared
[ -f .device/node.xz ] || xz -T0 -6 -c "$(command -v node)" > .device/node.xz
tar -cf - --exclude=node_modules/typescript --exclude=node_modules/@typescript --exclude=node_modules/@img \
  --exclude=node_modules/@sctg --exclude=node_modules/prismjs --exclude=node_modules/tshy --exclude=node_modules/.cache \
  node_modules | xz -T0 -4 > .device/nm.tar.xz
rm -rf .device/shared/golden .device/shared/manifests
cp -r "$shared"/golden "$shared"/manifests .device/shared/
# The device tool carries at most 64 MiB in all; test/gpu never reads the tiny I2V DiT (11 MB).
rm -f .device/shared/golden/weights/tiny_i2v_dit.*
chmod -R u+w .device/shared
du -sh .device
