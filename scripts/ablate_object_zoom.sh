#!/usr/bin/env bash
# Ablation: does training on object-zoom crops (data.object_zoom) let zoom-in help the default model?
# Two fine-tunes of the shipped weights, identical but for data.object_zoom, then the held-out
# validation (in val.jsonl) and box prompts on held-out train photos, whole image and zoomed.
# Runs both side by side (one core each); resumable.
#   bash scripts/ablate_object_zoom.sh [STEPS [ZOOM_PROB]]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-200}
P=${2:-0.3}
CONFIG=src/segany/configs/segany_cnn_cpu.yaml
PY=.venv/bin/python
SHIPPED=src/segany/weights/segany_default.safetensors
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
COMMON=(--max-minutes 600 --steps "$STEPS" --set train.val_every_steps="$STEPS" --set train.export=null
        --set train.checkpoint_every_s=300 --set optim.lr=1e-4 --set optim.warmup_steps=20)
run() {  # name, then --set overrides
  local name=$1; shift
  local out=runs/ablate_zoom/$name
  mkdir -p runs/ablate_zoom
  if [ -f "$out/val.jsonl" ]; then echo "$name: done"; return; fi
  local init=(--init-from "$SHIPPED")
  [ -f "$out/checkpoint.pt" ] && init=(--resume)
  nice -n 10 "$PY" -m segany.cli train "$CONFIG" "${init[@]}" --out-dir "$out" "${COMMON[@]}" "$@" \
    > "runs/ablate_zoom/$name.log" 2>&1
}
[ -d runs/sa1b_train/camvid ] || { echo "run scripts/train_default.sh once first (converts the train splits)"; exit 1; }
[ -f runs/decoder_init.safetensors ] || git show c8160ff:src/segany/weights/segany_default.safetensors > runs/decoder_init.safetensors
run control &
run object_zoom --set data.object_zoom="$P" &
wait
