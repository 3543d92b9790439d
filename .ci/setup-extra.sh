#!/usr/bin/env bash
# Extra setup for the data-engine tests on a clean machine (called by .ci/run before pytest):
#   - onnxruntime-web from the npm registry into src/segany/engine/web/node_modules (the page's
#     in-browser decoder; never committed),
#   - Debian's Chromium for the Playwright browser tests (Playwright's own browser download
#     does not work here; the tests use /usr/bin/chromium),
#   - PostgreSQL server binaries for the slow store test (tests/test_engine_postgres.py).
# Each step is skipped when already satisfied, so running it twice is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f src/segany/engine/web/node_modules/onnxruntime-web/dist/ort.wasm.min.js ]; then
  if command -v npm >/dev/null 2>&1; then
    (cd src/segany/engine/web && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
  else
    echo "setup-extra: npm not found; the browser tests will skip" >&2
  fi
fi

need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  need_apt+=(postgresql)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "setup-extra: cannot install ${need_apt[*]} (needs root and apt-get); those tests will skip" >&2
  fi
fi

# Python packages the engine tests import (also in the [test] extra of pyproject.toml).
if [ -x .venv/bin/python ]; then
  .venv/bin/python -m pip install -q "playwright>=1.40" "httpx>=0.25" "psycopg[binary]>=3.1" \
    "onnx>=1.15" "onnxruntime>=1.17" "fastapi>=0.110" "uvicorn>=0.27" 2>&1 | grep -v '^WARNING' || true
fi
echo "setup-extra: done"
