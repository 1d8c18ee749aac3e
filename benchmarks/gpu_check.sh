#!/usr/bin/env bash
# Accelerator check: environment facts, the GPU-relevant tests, landmark-env throughput, the DQN / PPO
# training programs and the Network3D update in float32 vs bfloat16, each stage under its own time
# limit, all results under $OUT (JSON per stage, tests.log, gpu_rows.md), a summary table last.
# About 8 minutes on one GPU, compilation included.
#
#   OUT=gpu_check_out GPU_CHECK_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh --dry-run     # every stage at tiny sizes on the CPU (a few minutes)
#
# Offline machines: wheels of missing pure-Python packages in .whl/ are installed into a fresh temporary directory
# (no index, no dependencies), and .gpu_data/ (a copy of the jaxmed data cache: afids/) becomes
# $JAXMED_DATA, so nothing is fetched. GPU_CHECK_COMMIT (or the file .gpu_data/commit) names the commit
# when the copy has no .git.
# PYTHON overrides the interpreter (default python3).
set -u
cd "$(dirname "$0")/.."
DRY=""
[ "${1:-}" = "--dry-run" ] && DRY="--dry-run"
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
T0=$(date +%s)
stamp() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }

if [ -z "$DRY" ] && ls .whl/*.whl >/dev/null 2>&1; then
  SITE=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
    > "$OUT/pip.log" 2>&1 || stamp "pip install of .whl/ failed (see pip.log)"
  export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .gpu_data ] && export JAXMED_DATA=$PWD/.gpu_data
export XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ -n "$DRY" ]; then
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
  LIMITS=(120 600 600 600 600)   # facts tests env train network3d (s): a loaded CPU
  TESTS=(tests/test_precision.py tests/test_ops.py)
  NPROC=2
else
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
  LIMITS=(35 120 125 80 125)
  TESTS=(tests/test_precision.py tests/test_ops.py tests/test_env_reference.py tests/test_landmark_env.py
         tests/test_bank.py tests/test_networks.py tests/test_replay.py tests/test_box_env.py tests/test_plane_env.py)
  NPROC=6
fi
run() {  # run LIMIT NAME CMD...: one stage, its output in OUT/NAME.log and on stdout
  local limit=$1 name=$2; shift 2
  stamp "stage $name (limit ${limit}s)"
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v "^\s*$" | tail -n 40
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || stamp "stage $name exit $rc$( [ "$rc" = 124 ] && echo ' (time limit)')"
  return 0
}

run "${LIMITS[0]}" facts "$PY" benchmarks/gpu_check.py facts --out "$OUT" $DRY
stamp "stage tests (limit ${LIMITS[1]}s)"
timeout -k 5 "${LIMITS[1]}" "$PY" -m pytest -v -rfEs -p no:cacheprovider -n "$NPROC" "${TESTS[@]}" > "$OUT/tests.log" 2>&1
TRC=$?
tail -n 25 "$OUT/tests.log"
"$PY" benchmarks/gpu_check.py tests-summary --out "$OUT" --exit-code "$TRC"
run "${LIMITS[2]}" env "$PY" benchmarks/gpu_check.py env --out "$OUT" $DRY
run "${LIMITS[3]}" train "$PY" benchmarks/gpu_check.py train --out "$OUT" $DRY
run "${LIMITS[4]}" network3d "$PY" benchmarks/gpu_check.py network3d --out "$OUT" $DRY
"$PY" benchmarks/gpu_check.py report --out "$OUT"
stamp "done; results in $OUT"
