#!/usr/bin/env bash
# Train (or continue training) segany's default model on one CPU core, in the background-friendly
# way the project uses: niced, 1 thread, resumable. Safe to run again at any time:
#   - the train splits are converted once (runs/sa1b_train);
#   - the decoder init (the previous default's prompt encoder + decoder) is taken from git history;
#   - with runs/segany_cnn/checkpoint.pt present it resumes exactly (--resume); without one (a new
#     machine) it starts from the shipped weights in the repo, so a lost machine loses little.
#   bash scripts/train_default.sh [MAX_MINUTES [--set key=value ...]]
# Arguments after MAX_MINUTES go to `segany train` (e.g. a piece's lr drop:
#   --set 'optim.decay_steps=[1900]').
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-600}
shift || true
CONFIG=src/segany/configs/segany_cnn_cpu.yaml
SEG=.venv/bin/segany
mkdir -p runs
if [ ! -d runs/sa1b_train/camvid ]; then
  nice -n 10 "$SEG" data convert shared-train ../shared/data runs/sa1b_train
fi
if [ ! -f runs/decoder_init.safetensors ]; then
  git show c8160ff:src/segany/weights/segany_default.safetensors > runs/decoder_init.safetensors.tmp
  mv runs/decoder_init.safetensors.tmp runs/decoder_init.safetensors
fi
if [ -f runs/segany_cnn/checkpoint.pt ]; then
  exec nice -n 10 "$SEG" train "$CONFIG" --resume --max-minutes "$MINUTES" "$@"
fi
SHIPPED=src/segany/weights/segany_default.safetensors
if .venv/bin/python -c "import sys; from segany.modeling.registry import read_checkpoint, config_from_state; \
s, m = read_checkpoint('$SHIPPED'); sys.exit(config_from_state(s, m).encoder_type != 'cnn')" 2>/dev/null; then
  exec nice -n 10 "$SEG" train "$CONFIG" --max-minutes "$MINUTES" --init-from "$SHIPPED" "$@"
fi
exec nice -n 10 "$SEG" train "$CONFIG" --max-minutes "$MINUTES" "$@"
