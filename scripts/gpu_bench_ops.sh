#!/usr/bin/env bash
# gpu_bench_ops.sh — the op benchmarks of scripts/gpu_check.sh: `subq bench ops` for the ops that have
# subq CUDA kernels, reference and kernel side by side at issue 6's shapes (B8 T4096 H16 D128 and
# B2 T16384 H16 D128, bf16). Needs $SUBQ (the binary) and $OUT (where the JSON goes).
# SUBQ_BENCH_OPS_IMPLS=cuda times only the kernels (the references' times are in bench/results).
set -euo pipefail
SUBQ=${SUBQ:-build-gpu/apps/subq}
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
"$SUBQ" bench ops --op ssd --impl ${SUBQ_BENCH_OPS_IMPLS:-reference cuda} --out "$OUT/bench-ops-ssd-h200.json"
"$SUBQ" bench ops --op gated_delta gated_delta_neg --impl ${SUBQ_BENCH_OPS_IMPLS:-reference cuda} --out "$OUT/bench-ops-gated-delta-h200.json"
"$SUBQ" bench ops --op mlstm --impl ${SUBQ_BENCH_OPS_IMPLS:-reference cuda} --out "$OUT/bench-ops-mlstm-h200.json"
