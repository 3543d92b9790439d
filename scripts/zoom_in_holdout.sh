#!/usr/bin/env bash
# The zoom-in comparisons of docs/evaluation.md, on held-out *train* photos (never eval splits).
# Resumable (each setting has its own --out); one niced core. Then the plot.
#   bash scripts/zoom_in_holdout.sh [WEIGHTS]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-src/segany/weights/segany_default.safetensors}
PY=.venv/bin/python
[ -d runs/holdout_photos ] || $PY scripts/zoom_in_holdout.py folder
E=".venv/bin/segany eval points --checkpoint $W --datasets sa1b:runs/holdout_photos --threads 1 --no-progress"
run() { name=$1; shift; nice -n 5 $E --out "runs/zoom_tune/$name" "$@" > "runs/zoom_tune/$name.log" 2>&1; }
mkdir -p runs/zoom_tune
run base
run zoom --zoom-in --zoom-expansion 1.4 --zoom-min-crop-fraction 0 --zoom-skip-clicks 1   # RITM's
run zoom_e18 --zoom-in --zoom-expansion 1.8 --zoom-min-crop-fraction 0 --zoom-skip-clicks 1
run zoom_e18_s2 --zoom-in --zoom-expansion 1.8 --zoom-min-crop-fraction 0 --zoom-skip-clicks 2
run zoom_e25_f33_s2 --zoom-in   # the defaults
$PY scripts/zoom_in_holdout.py boxes 1.1:0 1.4:0 1.8:0 2.5:0 3.5:0 1.4:0.5 1.8:0.5 2.5:0.33 2.5:0.25 3.0:0.33 2.2:0.4
$PY scripts/zoom_in_holdout.py plot runs/zoom_tune/base runs/zoom_tune/zoom runs/zoom_tune/zoom_e18 \
  runs/zoom_tune/zoom_e18_s2 runs/zoom_tune/zoom_e25_f33_s2 --out docs/zoom_in_holdout.png
