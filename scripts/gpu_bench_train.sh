#!/usr/bin/env bash
# gpu_bench_train.sh — end-to-end training throughput of the 340M-class configs on the GPU (issue 6's
# "the models train with the kernels"): `subq bench train` of the transformer, Mamba-2, Gated DeltaNet and
# xLSTM code configs with the dispatching ops (CUDA kernels where supported), each with --profile so the
# result JSON also says where a step's time goes. Needs $SUBQ (the binary) and $OUT (where the JSONs go).
#   SUBQ_BENCH_STEPS   measured steps per config (default 3; warm-up 1)
#   SUBQ_BENCH_ARCHS   which configs (default "mamba2 gdn xlstm transformer")
# A config that fails (e.g. out of memory) is reported and the others still run; exit status 1 then.
set -uo pipefail
SUBQ=${SUBQ:-build-gpu/apps/subq}
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
status=0
for arch in ${SUBQ_BENCH_ARCHS:-mamba2 gdn xlstm transformer}; do
  cfg=configs/code/$arch-340m.yaml
  if "$SUBQ" bench train --config "$cfg" --steps "${SUBQ_BENCH_STEPS:-3}" --warmup 1 --profile 25 \
       --out "$OUT/bench-train-$arch-340m-h200.json" > "$OUT/bench-train-$arch.log" 2>&1; then
    grep -E "median .* tokens/s" "$OUT/bench-train-$arch.log" | sed "s/^/[$arch] /"
  else
    echo "[$arch] FAILED: $(grep -iE 'error|out of memory' "$OUT/bench-train-$arch.log" | head -2)"
    status=1
  fi
done
exit $status
