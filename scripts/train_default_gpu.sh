#!/usr/bin/env bash
# The default model's training config on one CUDA GPU, in one command that fits in 8 minutes:
# the CPU config (src/segany/configs/segany_cnn_cpu.yaml) with bf16 autocast, 64 crops a step,
# 12 loader threads (the next step's crops are prepared while a step computes), a time cap, and
# the last FINAL_DECAY_MINUTES at lr / 10 (a time-capped run cannot know its step count ahead,
# and every piece of this model's training gained most from its final drop). A checkpoint and an
# fp16 export are written every 90 s and at the end. It continues from the shipped weights when
# they are a segany_cnn, so GPU minutes add to the CPU hours instead of starting over. Compare
# the result with the shipped model on the eval commands (docs/training.md) and ship whichever
# scores better.
#   bash scripts/train_default_gpu.sh [MAX_MINUTES] [extra `segany train` arguments, e.g. --set ...]
#
# On a bare GPU machine (no .venv, no network, no ../shared), as on the device tool:
#   SEGANY="python3 -m segany.cli" PYTHONPATH=src bash scripts/train_default_gpu.sh 7 \
#     --set 'data.roots=[...]'          # the folders that were carried (scripts/pack_gpu_data.py)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-7}
shift || true
FINAL_DECAY_MINUTES=${FINAL_DECAY_MINUTES:-2}
CONFIG=src/segany/configs/segany_cnn_cpu.yaml
PY=${PYTHON:-.venv/bin/python}
if [ -z "${SEGANY:-}" ]; then
  [ -x .venv/bin/segany ] || bash scripts/setup.sh
  SEGANY=.venv/bin/segany
  PY=.venv/bin/python
fi
mkdir -p runs
if [ ! -d runs/sa1b_train/coco ]; then
  [ -d ../shared/data ] || { echo "no runs/sa1b_train and no ../shared/data to convert" >&2; exit 2; }
  $SEGANY data convert shared-train ../shared/data runs/sa1b_train
fi
INIT=()
SHIPPED=src/segany/weights/segany_default.safetensors
if $PY -c "import sys; from segany.modeling.registry import read_checkpoint, config_from_state; \
s, m = read_checkpoint('$SHIPPED'); sys.exit(config_from_state(s, m).encoder_type != 'cnn')" 2>/dev/null; then
  INIT=(--init-from "$SHIPPED")  # a whole checkpoint: model.decoder_from is not read
elif [ ! -f runs/decoder_init.safetensors ]; then
  git show c8160ff:src/segany/weights/segany_default.safetensors > runs/decoder_init.safetensors.tmp
  mv runs/decoder_init.safetensors.tmp runs/decoder_init.safetensors
fi
$SEGANY train "$CONFIG" "${INIT[@]}" --out-dir runs/segany_cnn_gpu --max-minutes "$MINUTES" \
  --set train.device=cuda --set train.bf16=true --set train.threads=null \
  --set train.images_per_step=64 --set train.loader_workers=12 \
  --set optim.warmup_steps=20 --set train.checkpoint_every_s=90 --set train.val_every_steps=400 \
  --set train.final_decay_minutes="$FINAL_DECAY_MINUTES" \
  --set train.export=runs/segany_cnn_gpu/export_fp16.safetensors "$@"
