#!/usr/bin/env bash
# gpu_check.sh — the whole GPU check in one call (made for the H200 image: Ubuntu 24.04, its torch
# 2.11.0+cu130, nvcc 13, NCCL, no network): build for sm_90a, run every test (cpu and gpu labels),
# print the machine, time the ops that have CUDA kernels (gpu_bench_ops.sh), run a short training
# smoke test on the GPU, time the 340M configs' training (gpu_bench_train.sh). Logs and summary.txt go to
# $OUT (or ./gpu-check-out). Exit status is non-zero when any step failed.
#   SUBQ_CHECK_LABELS   ctest labels to run (default "cpu|gpu"; "gpu" when CI already ran the CPU suite)
#   SUBQ_SMOKE=0        skip the smoke run;  SUBQ_BENCH_TRAIN=0  skip the training benchmarks
#   SUBQ_CHECK_BUDGET_S wall-clock budget: every step gets at most what is left of it (default: none), so
#                       a limited device session still returns the steps' logs
#   SUBQ_CHECK_PACK=1   keep $OUT to three files — summary.txt, check.log and results.tar.gz (the benches'
#                       JSON and logs) — for transports that return only a few files
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
# where the steps' result files go: $OUT itself, or a scratch folder packed into $OUT/results.tar.gz at exit
RES="$OUT"
if [ "${SUBQ_CHECK_PACK:-0}" = 1 ]; then
  RES=$(mktemp -d)
  trap 'tar czf "$OUT/results.tar.gz" -C "$RES" . && rm -rf "$RES"' EXIT
fi
# NVLink multicast stays off on shared machines.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
BUILD=${SUBQ_BUILD_DIR:-build-gpu}
summary="$OUT/summary.txt"
: > "$summary"
status=0
# Every step's output goes to $OUT/check.log (one file: the device tool returns only a few files).
log="$OUT/check.log"
: > "$log"
T_START=$SECONDS
step() {  # step NAME CMD... : runs CMD, appends its output to check.log, records ok/FAIL and the time
  local name=$1; shift
  local t0=$SECONDS
  local limit=()
  if [ -n "${SUBQ_CHECK_BUDGET_S:-}" ]; then
    local left=$((SUBQ_CHECK_BUDGET_S - (SECONDS - T_START) - 5))
    if [ $left -le 5 ]; then echo "skip  $name (budget spent)" | tee -a "$summary"; status=1; LAST_LOG=""; return; fi
    limit=(timeout $left)
  fi
  echo "===== $name: $*" >> "$log"
  if "${limit[@]}" "$@" > "$RES/.step.log" 2>&1; then
    echo "ok    $name ($((SECONDS - t0)) s)" | tee -a "$summary"
  else
    echo "FAIL  $name ($((SECONDS - t0)) s): see check.log" | tee -a "$summary"
    grep -E "error|FAILED|Failed|failed" "$RES/.step.log" | head -30
    status=1
  fi
  cat "$RES/.step.log" >> "$log"
  LAST_LOG=$(cat "$RES/.step.log")
  rm -f "$RES/.step.log"
}
# A copied tree has no .git: SUBQ_BUILD_COMMIT (set by the caller) names the commit instead.
export SUBQ_BUILD_COMMIT=${SUBQ_BUILD_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
{ echo "subq gpu check — $(date -u +%Y-%m-%dT%H:%M:%SZ) — commit $SUBQ_BUILD_COMMIT"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'; } | tee -a "$summary"
step setup env SUBQ_SKIP_APT=1 scripts/setup.sh
step build env SUBQ_NO_SETUP=1 SUBQ_BUILD_DIR="$BUILD" SUBQ_CMAKE_ARGS="-DSUBQ_CUDA=ON -DSUBQ_CUDA_ARCHS=90a ${SUBQ_CMAKE_ARGS:-}" scripts/build.sh
if [ -x "$BUILD/apps/subq" ]; then
  step version "$BUILD/apps/subq" version
  echo "$LAST_LOG" >> "$summary"
  step tests ctest --test-dir "$BUILD" -L "${SUBQ_CHECK_LABELS:-cpu|gpu}" --output-on-failure -j 8
  echo "$LAST_LOG" | grep -E "tests passed|tests failed|^\s+[0-9]+ - " | tee -a "$summary"
  if [ -x scripts/gpu_bench_ops.sh ]; then
    step bench-ops env SUBQ="$BUILD/apps/subq" OUT="$RES" scripts/gpu_bench_ops.sh
    echo "$LAST_LOG" | grep -E "\] B[0-9]+ T[0-9]+" | tee -a "$summary"
  fi
  if [ "${SUBQ_BENCH_TRAIN:-1}" != 0 ] && [ -x scripts/gpu_bench_train.sh ]; then
    step bench-train env SUBQ="$BUILD/apps/subq" OUT="$RES" scripts/gpu_bench_train.sh
    echo "$LAST_LOG" | grep -E "^\[" | tee -a "$summary"
  fi
  if [ "${SUBQ_SMOKE:-1}" != 0 ] && [ -x scripts/gpu_smoke.sh ]; then
    step smoke env SUBQ="$BUILD/apps/subq" OUT="$RES" scripts/gpu_smoke.sh
    echo "$LAST_LOG" | tail -3 >> "$summary"
  fi
  # data-parallel scaling (weak, same per-GPU batch) where there are >= 2 GPUs; SUBQ_DIST_SCALING=0 skips it
  if [ "${SUBQ_DIST_SCALING:-1}" != 0 ] && [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
    step dist-scaling env SUBQ="$BUILD/apps/subq" OUT="$RES" scripts/dist_scaling.sh configs/code/transformer-340m.yaml 2 4
    echo "$LAST_LOG" | tail -6 >> "$summary"
  fi
fi
echo "status: $([ $status = 0 ] && echo PASS || echo FAIL)" | tee -a "$summary"
exit $status
