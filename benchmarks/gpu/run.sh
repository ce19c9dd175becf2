#!/usr/bin/env bash
# The device command (issue 25), from the repository root of a checkout that carries its bundle
# (python benchmarks/gpu/bundle.py makes .gpu_bundle; the device tool's carry: [".gpu_bundle"]):
#   bash benchmarks/gpu/run.sh              # on the lent GPU machine: report and models in $OUT
#   bash benchmarks/gpu/run.sh --dry-run    # the same steps on the CPU, tiny (tests, CI)
# Installs the bundle's wheels into a temporary folder (no network needed), then runs
# benchmarks/gpu/device_run.py (its --help lists the options); everything is also written to
# <out>/run.log as it happens, so a run cut short still returns its log.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUNDLE="${GPU_BUNDLE:-$ROOT/.gpu_bundle}"
RUN_OUT="${OUT:-$ROOT/benchmarks/results/gpu_run}"
mkdir -p "$RUN_OUT"
exec > >(tee -a "$RUN_OUT/run.log") 2>&1
echo "[run.sh $(date -u +%H:%M:%S)] bundle $BUNDLE, out $RUN_OUT"
SITE="$(mktemp -d "${TMPDIR:-/tmp}/gpu_site.XXXXXX")"
if compgen -G "$BUNDLE/wheels/*.whl" >/dev/null; then
  "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "$BUNDLE"/wheels/*.whl || exit 1
fi
export PYTHONPATH="$SITE:$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export KEDRO_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 MPLBACKEND=Agg
cd "$ROOT"
"${PYTHON:-python3}" benchmarks/gpu/device_run.py --bundle "$BUNDLE" --out "$RUN_OUT" "$@"
status=$?
echo "[run.sh $(date -u +%H:%M:%S)] exit $status"
exit $status
