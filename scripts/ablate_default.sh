#!/usr/bin/env bash
# Short ablations behind the default model's choices (docs/training.md): each run trains the
# default config's model from the same init for the same number of steps and scores the same
# held-out images (carved from the train splits) at the end. Runs one after another on one core,
# niced below the main training; a finished run is skipped, an interrupted one resumes.
#   bash scripts/ablate_default.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-250}
CONFIG=src/segany/configs/segany_cnn_cpu.yaml
PY=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, also when run from a copy
COMMON=(--set train.val_every_steps=$((STEPS / 2)) --set train.val_limit=40 --set train.export=null
        --set train.checkpoint_every_s=300 --set optim.warmup_steps=50)
run() {  # name, then --set overrides
  local name=$1; shift
  local out=runs/ablate/$name
  if [ -f "$out/val.jsonl" ] && [ "$(wc -l < "$out/val.jsonl")" -ge 2 ]; then echo "$name: done"; return; fi
  local resume=()
  [ -f "$out/checkpoint.pt" ] && resume=(--resume)
  echo "$name: training $STEPS steps"
  mkdir -p runs/ablate
  nice -n 19 "$PY" -m segany.cli train "$CONFIG" "${resume[@]}" --out-dir "$out" --steps "$STEPS" \
    "${COMMON[@]}" "$@" > "runs/ablate/$name.log" 2>&1 || { echo "$name failed: see runs/ablate/$name.log"; return 1; }
}
run cnn_crop256                                                    # the default recipe
run cnn_crop256_noaug --set data.copy_paste=0 --set data.color_jitter=0 --set data.hflip=0 --set "data.scale=[1.0, 1.0]"
run cnn_full512 --set data.crop=512 --set train.images_per_step=2  # whole input squares, ~same cost a step
run vit_full512 --set model.type=segany_tiny --set data.crop=512 --set train.images_per_step=2
$PY - <<'PY'
import json, pathlib
for run in sorted(pathlib.Path("runs/ablate").iterdir()):
    rows = [json.loads(l) for l in (run / "val.jsonl").read_text().splitlines()] if (run / "val.jsonl").exists() else []
    m = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
    sec = sum(r["sec"] for r in m)
    last = rows[-1] if rows else {}
    print(f"{run.name:22s} steps {len(m):4d} step-compute {sec/60:6.1f} min  " + "  ".join(f"{k} {last[k]:.3f}" for k in ("val_point", "val_box", "val_3clicks") if k in last))
PY
