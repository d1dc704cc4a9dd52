#!/usr/bin/env bash
# gpu_smoke.sh — the smoke run of scripts/gpu_check.sh: the code-LM pipeline end to end on the GPU in
# bf16 (prepare a corpus, train a few hundred steps, eval, generate, export), then `subq bench train`
# of the 340M transformer. Needs $SUBQ (the binary) and $OUT (where results go).
set -euo pipefail
SUBQ=${SUBQ:-build-gpu/apps/subq}
OUT=${OUT:-gpu-check-out}
WORK=${SUBQ_SMOKE_DIR:-/tmp/subq-smoke}
rm -rf "$WORK"; mkdir -p "$WORK"
"$SUBQ" prepare code --out "$WORK/code" --threads 16
"$SUBQ" train --config configs/quickstart.yaml --set run.out_dir="$WORK/runs" --set run.name=smoke \
  --set run.device=cuda --set data.train="$WORK/code/train" --set data.val="$WORK/code/val" \
  --set data.tokenizer="$WORK/code/tokenizer.json" --set train.steps=300 --set train.batch_size=32
"$SUBQ" eval --run "$WORK/runs/smoke" | tee "$OUT/smoke-eval.json"
"$SUBQ" generate --run "$WORK/runs/smoke" --prompt "import os" --max-new-tokens 64 --seed 0
"$SUBQ" plot "$WORK/runs/smoke" --out "$OUT/smoke-report.html"
"$SUBQ" bench train --config configs/code/transformer-340m.yaml --steps ${SUBQ_BENCH_STEPS:-20} \
  --warmup 5 --out "$OUT/bench-train-transformer-340m-h200.json"
