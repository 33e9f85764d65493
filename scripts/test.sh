#!/usr/bin/env bash
# The test suite (CPU is fine). GPU tests are marked `gpu` and skip without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
exec python -m pytest -q -p no:cacheprovider --durations=15 "$@"
