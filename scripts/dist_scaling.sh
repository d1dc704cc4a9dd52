#!/usr/bin/env bash
# dist_scaling.sh — data-parallel scaling efficiency of a config on this machine's GPUs: `subq bench train`
# on 1 GPU, then `subq launch --nproc N -- bench train` for each N (default 2 and 4, those this machine has),
# same per-GPU batch (weak scaling). Efficiency(N) = tokens/s on N GPUs / (N x tokens/s on 1 GPU).
# Writes $OUT/dist-scaling-<config name>.json (per-N bench results + efficiencies) and prints a table.
#
#   scripts/dist_scaling.sh [CONFIG] [N ...]     e.g. scripts/dist_scaling.sh configs/code/transformer-340m.yaml 2 4
#   env: SUBQ (binary, default build-gpu/apps/subq), OUT (default bench/results), STEPS (20), WARMUP (5),
#        EXTRA (more --set overrides, e.g. "--set dist.zero1=true")
set -euo pipefail
cd "$(dirname "$0")/.."
SUBQ=${SUBQ:-build-gpu/apps/subq}
OUT=${OUT:-bench/results}
CONFIG=${1:-configs/code/transformer-340m.yaml}
shift || true
NS=${*:-2 4}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
# NVLink multicast stays off on shared machines (subq launch sets it too).
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
GPUS=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l || echo 0)
NAME=$(basename "$CONFIG" .yaml)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"
# shellcheck disable=SC2086
"$SUBQ" bench train --config "$CONFIG" --steps "$STEPS" --warmup "$WARMUP" ${EXTRA:-} --out "$TMP/n1.json" > /dev/null
done_ns="1"
for n in $NS; do
  if [ "$n" -gt "$GPUS" ]; then echo "[dist_scaling] skipping $n GPUs: this machine has $GPUS" >&2; continue; fi
  # shellcheck disable=SC2086
  "$SUBQ" launch --nproc "$n" -- bench train --config "$CONFIG" --steps "$STEPS" --warmup "$WARMUP" ${EXTRA:-} \
    --out "$TMP/n$n.json" > /dev/null
  done_ns="$done_ns $n"
done
python3 - "$TMP" "$OUT/dist-scaling-$NAME.json" "$CONFIG" "${EXTRA:-}" $done_ns <<'EOF'
import json, sys, datetime
tmp, out, config, extra, ns = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], [int(x) for x in sys.argv[5:]]
runs = {n: json.load(open(f"{tmp}/n{n}.json")) for n in ns}
base = runs[1]["tokens_per_s"]["median"]
rows = []
for n in ns:
    r = runs[n]
    tps = r["tokens_per_s"]["median"]
    rows.append({"gpus": n, "world": r["setup"]["world"], "tokens_per_s": tps,
                 "tokens_per_s_per_gpu": tps / n, "step_time_s": r["step_time_s"]["median"],
                 "mfu_per_gpu": (r["mfu"] or {}).get("median"), "efficiency": tps / (n * base),
                 "peak_allocated_gib": r["memory"].get("peak_allocated_gib")})
res = {"bench": "dist-scaling", "date": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
       "commit": runs[1]["commit"], "config": config, "extra": extra, "machine": runs[1]["machine"],
       "scaling": "weak: the same per-GPU batch; efficiency = tokens/s(N) / (N x tokens/s(1))",
       "rows": rows, "runs": {str(n): runs[n] for n in ns}}
json.dump(res, open(out, "w"), indent=2)
print(f"{'gpus':>4} {'tokens/s':>12} {'per gpu':>10} {'step s':>8} {'mfu':>6} {'efficiency':>10}")
for r in rows:
    mfu = f"{r['mfu_per_gpu']:.3f}" if r["mfu_per_gpu"] is not None else "n/a"
    print(f"{r['gpus']:>4} {r['tokens_per_s']:>12.0f} {r['tokens_per_s_per_gpu']:>10.0f} {r['step_time_s']:>8.3f} {mfu:>6} {r['efficiency']:>10.3f}")
print(f"written to {out}")
EOF
