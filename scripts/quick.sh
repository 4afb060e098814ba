#!/usr/bin/env bash
# The main job: set up (first time only), then run the quick suite on generated data (no download).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${ATTN_ZOO_VENV:-.venv}/bin/attn-zoo" run suites/quick.toml "$@"
