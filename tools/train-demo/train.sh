#!/usr/bin/env bash
# Trains the demo model set of models/demo from nothing (tools/train-demo/README.md): the exact
# commands and seeds. About two hours on a 2-core CPU (README.md, "Status", has each stage's).
#   tools/train-demo/train.sh [work-dir]      (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-/tmp/wan-demo-train}
mkdir -p "$work"

# The trainer links the addon's engine (models, ops, loaders) into an executable.
cmake -DWAN_BUILD_TRAIN_DEMO=ON build >/dev/null
cmake --build build --target wan_train_demo
npx tsc -p tsconfig.json
trainer=build/wan_train_demo
spec=models/demo/demo.json

# 1. Vocabulary, frozen umT5 and the training prompts' embeddings (seed 7).
node dist/tools/train-demo/prepare.js "$work" 7
# 2. The VAE as an autoencoder, in two stages: single frames (the first-frame path, nine times
#    cheaper a sample) until colours and shapes come back, then nine-frame clips, continuing from
#    the first, for the temporal paths. Both on random 32x32 crops, the shapes' pixels weighted 8x.
"$trainer" vae --spec "$spec" --out "$work/vae-images.safetensors" \
  --steps 1200 --batch 8 --frames 1 --crop 32 --dim 16 --lr 4e-3 --ema 0.99 --seed 1 \
  --object-weight 8 --init-gain 3 --bias-scale 0.1 | tee "$work/vae-images.log"
"$trainer" vae --spec "$spec" --init "$work/vae-images.safetensors" --out "$work/wan-demo-vae.safetensors" \
  --steps 2400 --batch 2 --frames 9 --crop 32 --dim 16 --lr 3e-3 --ema 0.99 --seed 11 \
  --object-weight 8 | tee "$work/vae.log"
# 3. Three 17-frame clips of every training prompt, encoded by that VAE (seed 2).
"$trainer" latents --spec "$spec" --prompts "$work/prompts.safetensors" \
  --vae "$work/wan-demo-vae.safetensors" --out "$work/latents.safetensors" --clips 2931 --seed 2 | tee "$work/latents.log"
# 4. The DiT, flow matching on those latents (seed 3).
"$trainer" dit --prompts "$work/prompts.safetensors" --latents "$work/latents.safetensors" \
  --out "$work/wan-demo-dit.safetensors" --steps 6000 --batch 24 --dim 128 --ffn 512 --layers 5 \
  --heads 2 --text-len 16 --lr 8e-4 --ema 0.995 --shift 3 --seed 3 | tee "$work/dit.log"

cp "$work"/umt5-demo.safetensors "$work"/wan-demo-vae.safetensors "$work"/wan-demo-dit.safetensors models/demo/
echo "models/demo updated from $work"
