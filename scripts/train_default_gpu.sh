#!/usr/bin/env bash
# The default model's training config on one CUDA GPU, in one command that fits in 8 minutes:
# the CPU config (src/segany/configs/segany_cnn_cpu.yaml) with bf16 autocast, 64 crops a step,
# 12 loader threads, and a 7-minute cap (a checkpoint and an fp16 export are written at the end).
# It continues from the shipped weights when they are a segany_cnn, so GPU minutes add to the CPU
# hours instead of starting over. Compare the result with the shipped model on the eval commands
# (docs/training.md) and ship whichever scores better.
#   bash scripts/train_default_gpu.sh [MAX_MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-7}
CONFIG=src/segany/configs/segany_cnn_cpu.yaml
SEG=.venv/bin/segany
[ -x "$SEG" ] || bash scripts/setup.sh
mkdir -p runs
[ -d runs/sa1b_train/camvid ] || "$SEG" data convert shared-train ../shared/data runs/sa1b_train
if [ ! -f runs/decoder_init.safetensors ]; then
  git show c8160ff:src/segany/weights/segany_default.safetensors > runs/decoder_init.safetensors.tmp
  mv runs/decoder_init.safetensors.tmp runs/decoder_init.safetensors
fi
INIT=()
SHIPPED=src/segany/weights/segany_default.safetensors
if .venv/bin/python -c "import sys; from segany.modeling.registry import read_checkpoint, config_from_state; \
s, m = read_checkpoint('$SHIPPED'); sys.exit(config_from_state(s, m).encoder_type != 'cnn')" 2>/dev/null; then
  INIT=(--init-from "$SHIPPED")
fi
"$SEG" train "$CONFIG" "${INIT[@]}" --out-dir runs/segany_cnn_gpu --max-minutes "$MINUTES" \
  --set train.device=cuda --set train.bf16=true --set train.threads=null \
  --set train.images_per_step=64 --set train.loader_workers=12 \
  --set optim.warmup_steps=20 --set train.checkpoint_every_s=120 --set train.val_every_steps=100 \
  --set train.export=runs/segany_cnn_gpu/export_fp16.safetensors
