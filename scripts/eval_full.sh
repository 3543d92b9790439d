#!/usr/bin/env bash
# Full evaluation runs of the default model (or --checkpoint ...) on every eval split, into eval_full/.
# Every command is resumable (OUT/.resume): run this again after an interruption and only the
# missing images are computed. On a 2-core CPU the work is many hours, so it is split in two
# lanes, one core each, that can run side by side; `report` then writes the combined reports.
#
#   bash scripts/eval_full.sh a        # lane a: segany edge maps, then the proposals (64x64 grid)
#   bash scripts/eval_full.sh b        # lane b: Canny/Sobel edges, points, instances, fairness, prompts
#   bash scripts/eval_full.sh report   # every report, from the stored images (computes what is missing)
#   bash scripts/eval_full.sh partial  # reports of what is finished so far, computing nothing (any time)
# `report` and `partial` end with eval_full/summary.md: every experiment's headline table on one page.
#   bash scripts/eval_full.sh b --checkpoint sam_vit_b_01ec64.pth   # extra arguments go to every command
#
# Logs: eval_full/<lane>.log. Reports: eval_full/<experiment>/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
lane=${1:?usage: eval_full.sh a|b|report|partial [segany eval options]}
shift
SEG=".venv/bin/segany"
OUT=eval_full
mkdir -p "$OUT"
run() {  # run <experiment> <args...>: one resumable command, timed
  local exp=$1
  shift
  echo "== $(date -u +%FT%TZ) segany eval $exp $*"
  local t0=$SECONDS
  if ! "$SEG" eval "$exp" --no-progress "$@"; then
    echo "== $exp: failed after $((SECONDS - t0)) s"
    return 1
  fi
  echo "== $exp: $((SECONDS - t0)) s"
}
case "$lane" in
  a)
    run edges --baselines --threads 1 --out "$OUT/edges" "$@"
    run proposals --threads 1 --out "$OUT/proposals" "$@"
    ;;
  b)
    run edges --no-model --out "$OUT/edges"
    for ds in grabcut cvppp_a1 coco_tiny dsb2018; do
      run points --datasets "$ds" --threads 1 --out "$OUT/points" "$@"
    done
    run instances --threads 1 --out "$OUT/instances" "$@"
    run fairness --threads 1 --out "$OUT/fairness" "$@"
    run prompts --baselines none --clicks-from "$OUT/points" --threads 1 --out "$OUT/prompts" "$@"
    ;;
  report)
    run edges --threads 2 --out "$OUT/edges" "$@"
    run points --threads 2 --out "$OUT/points" "$@"
    run proposals --threads 2 --out "$OUT/proposals" "$@"
    run instances --threads 2 --out "$OUT/instances" "$@"
    run fairness --threads 2 --out "$OUT/fairness" "$@"
    run prompts --baselines none --clicks-from "$OUT/points" --threads 2 --out "$OUT/prompts" "$@"
    "$SEG" eval summary "$OUT"
    ;;
  partial)
    # Read-only: never computes, so it is safe while lanes a and b are running. An experiment
    # with nothing finished yet reports an error and the others go on.
    for exp in edges points proposals fairness prompts; do
      args=(--threads 1 --out "$OUT/$exp" --partial)
      [ "$exp" = prompts ] && args+=(--baselines none)
      run "$exp" "${args[@]}" "$@" || true
    done
    "$SEG" eval summary "$OUT"
    ;;
  *)
    echo "unknown lane $lane: use a, b, report or partial" >&2
    exit 2
    ;;
esac
