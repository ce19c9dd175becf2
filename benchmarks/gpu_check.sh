#!/usr/bin/env bash
# The prepared GPU check as one command (issue 17): this checkout's code, the report in $OUT
# when set (a lent device machine), else benchmarks/results/. Extra arguments go to
# benchmarks/gpu_check.py (e.g. --cpu-dry-run, --budget-s 420, --images-dir DIR).
#   bash benchmarks/gpu_check.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
exec "${PYTHON:-python3}" benchmarks/gpu_check.py --out-dir "${OUT:-$ROOT/benchmarks/results}" "$@"
