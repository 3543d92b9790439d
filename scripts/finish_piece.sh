#!/usr/bin/env bash
# The end of a training piece in one command: measure a candidate export of the default model
# on what docs/training.md reports, on two lanes (one core each), and, with --ship, install it
# as the embedded default and redo everything that depends on the shipped weights.
#
#   bash scripts/finish_piece.sh runs/segany_cnn/export_fp16.safetensors          # measure only
#   bash scripts/finish_piece.sh runs/segany_cnn/export_fp16.safetensors --ship   # and ship it
#
# Measure (reports under runs/piece_eval/): GrabCut clicks (`segany eval points`, 50 objects,
# ~2.5 min) then coco_tiny + GrabCut box/point/clicks (`segany eval prompts --baselines none`,
# ~10 min) on lane 1; the held-out train validation (all 65 held-out images, 254 masks, as val.jsonl
# since piece 6) on lane 2.
# --ship then copies the file to src/segany/weights/segany_default.safetensors, re-calibrates
# the automatic thresholds on held-out train images (lane 2, ~7 min: the thresholds JSON records
# the weights' SHA-256 and a test fails when it is stale), retakes the README overlay
# (README command 1 -> docs/default_model_overlay.png) and the annotation-page screenshot
# (docs/engine_annotator.png). The docs' numbers are then updated by hand from the reports.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:?usage: finish_piece.sh WEIGHTS.safetensors [--ship]}
SHIP=${2:-}
SEG=.venv/bin/segany
PY=.venv/bin/python
OUT=runs/piece_eval
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
[ -f "$W" ] || { echo "finish_piece: no such file: $W" >&2; exit 2; }
# the converted train splits (validation and calibration read them): scripts/train_default.sh makes them
[ -d runs/sa1b_train/camvid ] || { echo "finish_piece: no runs/sa1b_train (run scripts/train_default.sh first)" >&2; exit 2; }

lane1() {
  "$SEG" eval points --datasets grabcut --threads 1 --no-progress --no-resume --checkpoint "$W" \
    --out "$OUT/points_grabcut" > "$OUT/points_grabcut.log" 2>&1
  "$SEG" eval prompts --datasets coco_tiny grabcut --baselines none --threads 1 --no-progress --no-resume \
    --checkpoint "$W" --out "$OUT/prompts" > "$OUT/prompts.log" 2>&1
}
lane2() {
  # the held-out train validation of val.jsonl (same images, masks, seed and limit as the
  # training loop's, so the number is comparable with the curve's)
  "$PY" - "$W" > "$OUT/val.log" 2>&1 <<'EOF'
import json
import sys

from segany.modeling.build import build_model
from segany.train.loop import TrainConfig
from segany.train.validation import validate, validation_set

cfg = TrainConfig.load("src/segany/configs/segany_cnn_cpu.yaml")
sam = build_model("auto", checkpoint=sys.argv[1]).float().eval()
val = validation_set(cfg.data.root_list(), sam.img_size, cfg.data.holdout_every)
print(json.dumps(validate(sam, val, seed=cfg.train.seed, limit=cfg.train.val_limit)))
EOF
  if [ "$SHIP" = "--ship" ]; then
    cp "$W" src/segany/weights/segany_default.safetensors.tmp
    mv src/segany/weights/segany_default.safetensors.tmp src/segany/weights/segany_default.safetensors
    "$PY" scripts/calibrate_auto.py runs/sa1b_train/* --limit 12 > "$OUT/calibrate.log" 2>&1
  fi
}
lane1 & P1=$!
lane2 & P2=$!
wait $P1 || { echo "finish_piece: lane 1 failed, see $OUT/*.log" >&2; exit 1; }
wait $P2 || { echo "finish_piece: lane 2 failed, see $OUT/*.log" >&2; exit 1; }
if [ "$SHIP" = "--ship" ]; then
  "$SEG" predict ../shared/data/grabcut/images/106024.jpg --point 230,210 --out "$OUT/readme/mask.png" \
    > "$OUT/readme.json"
  cp "$OUT/readme/mask_overlay.png" docs/default_model_overlay.png
  SEGANY_SCREENSHOT=docs/engine_annotator.png "$PY" -m pytest -q tests/browser -k roundtrip > "$OUT/screenshot.log" 2>&1
fi
echo "== held-out validation"; tail -1 "$OUT/val.log"
echo "== GrabCut clicks"; grep -E "^\|" "$OUT/points_grabcut/report.md" | head -20 || true
echo "== prompts"; grep -E "\|" "$OUT/prompts/report.md" | head -30 || true
[ "$SHIP" = "--ship" ] && { echo "== calibration"; tail -5 "$OUT/calibrate.log"; echo "== README job"; cat "$OUT/readme.json"; }
exit 0
