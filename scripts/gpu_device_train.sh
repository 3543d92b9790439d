#!/usr/bin/env bash
# The GPU training piece as one command on the device tool's bare machine (its python3 has
# PyTorch and CUDA but no pycocotools, no network, no ../shared). Prepare here, once:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl pycocotools==2.0.10
#   .venv/bin/python scripts/pack_gpu_data.py runs/sa1b_train runs/gpu_pack --max-side 512 --quality 80
#   mkdir -p runs/gpu_pack1 && tar -cJf runs/gpu_pack1/data.tar.xz -C runs/gpu_pack coco coco128_seg bsds cvppp dsb
#
# then call the device tool's run with carry [".whl", "runs/gpu_pack1"] and the command
#   bash scripts/gpu_device_train.sh 7.25
# It installs the wheels, unpacks the data, trains (scripts/train_default_gpu.sh, roots = the
# YAML's roots that were carried), and leaves under $OUT the logs and the fp16 export split in
# 15 MB parts (the tool returns files of at most 16 MiB). Here, afterwards:
#   cat /work/.device/N/export_fp16.part.* > runs/gpu1/export_fp16.safetensors
#   sha256sum runs/gpu1/export_fp16.safetensors   # == /work/.device/N/sha256.txt
#   bash scripts/finish_piece.sh runs/gpu1/export_fp16.safetensors   # measure; --ship if better
set -uo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-7}
shift || true  # further arguments go to `segany train` (a CPU dry run: --set train.device=cpu ...)
OUT=${OUT:-runs/gpu_out}
mkdir -p "$OUT" runs/sa1b_train
if ! python3 -c "import pycocotools" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for pack in runs/gpu_pack*/data.tar.xz; do
  tar -xJf "$pack" -C runs/sa1b_train || exit 4
done
# the YAML's roots (with their repeats) whose folders were carried
ROOTS=$(python3 - <<'EOF'
import json
from pathlib import Path
from segany.train.loop import TrainConfig
cfg = TrainConfig.load("src/segany/configs/segany_cnn_cpu.yaml")
kept = [r for r in cfg.data.roots if Path(r["path"]).is_dir()]
print(json.dumps(kept))
EOF
) || exit 5
echo "roots: $ROOTS"
T0=$(date +%s)
SEGANY="python3 -m segany.cli" PYTHON=python3 bash scripts/train_default_gpu.sh "$MINUTES" --set "data.roots=$ROOTS" "$@" \
  > "$OUT/log.txt" 2>&1
RC=$?
tr '\r' '\n' < "$OUT/log.txt" | grep -v 'it/s' | tail -20
tr '\r' '\n' < "$OUT/log.txt" | grep 'it/s' | tail -1
echo "train rc=$RC wall=$(( $(date +%s) - T0 ))s"
RUN=runs/segany_cnn_gpu
cp "$RUN/metrics.jsonl" "$RUN/val.jsonl" "$OUT/" 2>/dev/null
if [ -f "$RUN/export_fp16.safetensors" ]; then
  split -b 15M "$RUN/export_fp16.safetensors" "$OUT/export_fp16.part."
  sha256sum "$RUN/export_fp16.safetensors" | tee "$OUT/sha256.txt"
fi
exit $RC
