#!/usr/bin/env bash
# gpu_bench_ops.sh — the op benchmarks of scripts/gpu_check.sh: `subq bench ops` for the ops that have
# subq CUDA kernels, reference and kernel side by side at issue 6's shapes (B8 T4096 H16 D128 and
# B2 T16384 H16 D128, bf16). Needs $SUBQ (the binary) and $OUT (where the JSON goes).
# SUBQ_BENCH_OPS_IMPLS=cuda times only the kernels (the references' times are in bench/results).
# SUBQ_BENCH_OPS_PROFILE=N (default 12): each entry also gets the top N kernels of one profiled call (0 = off).
set -euo pipefail
SUBQ=${SUBQ:-build-gpu/apps/subq}
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
"$SUBQ" bench ops --op ssd --profile "${SUBQ_BENCH_OPS_PROFILE:-12}" --impl ${SUBQ_BENCH_OPS_IMPLS:-reference cuda} --out "$OUT/bench-ops-ssd-h200.json"
"$SUBQ" bench ops --op gated_delta gated_delta_neg --profile "${SUBQ_BENCH_OPS_PROFILE:-12}" --impl ${SUBQ_BENCH_OPS_IMPLS:-reference cuda} --out "$OUT/bench-ops-gated-delta-h200.json"
"$SUBQ" bench ops --op mlstm --profile "${SUBQ_BENCH_OPS_PROFILE:-12}" --impl ${SUBQ_BENCH_OPS_IMPLS:-reference cuda} --out "$OUT/bench-ops-mlstm-h200.json"
