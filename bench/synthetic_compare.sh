#!/usr/bin/env bash
# synthetic_compare.sh — the architecture comparison on the synthetic state-tracking suite (issue 4,
# item 6; docs/synthetic.md): trains every (task, model) pair with the suite's protocol (train at
# data.synthetic.train_len, evaluate at every data.synthetic.eval_lens), then writes the accuracy-by-
# length table as Markdown and JSON.
#
#   bench/synthetic_compare.sh [--tasks "parity s3"] [--models "transformer xlstm10 ..."] [--steps N]
#                              [--jobs J] [--device auto|cpu|cuda] [--time-limit S] [--work DIR]
#                              [--out PREFIX] [-- --set k=v ...]
#
# Runs go to $WORK/<task>-<model> (default work dir: runs/synthetic-compare); J runs at a time (several
# small models share one GPU well). Extra arguments after -- go to every `subq train`. With --time-limit S
# a run that is still training after S seconds is stopped with SIGTERM (subq checkpoints and exits) and
# evaluated at the step it reached (the table records that step). The table goes to
# PREFIX.md and PREFIX.json (default bench/results/synthetic-compare-<host kind>) with the commit, date,
# machine and the exact commands. Needs $SUBQ (default build/apps/subq) and python3 for the table.
set -euo pipefail
cd "$(dirname "$0")/.."
SUBQ=${SUBQ:-build/apps/subq}
TASKS="parity s3"
MODELS="transformer xlstm10 xlstm11 mamba2 gdn gdn_neg"
STEPS=""
JOBS=1
DEVICE=auto
WORK=runs/synthetic-compare
OUTP=""
TIME_LIMIT=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tasks) TASKS=$2; shift 2 ;;
    --models) MODELS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --time-limit) TIME_LIMIT=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --out) OUTP=$2; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "synthetic_compare.sh: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -x "$SUBQ" ] || { echo "synthetic_compare.sh: no subq binary at $SUBQ (build first: scripts/build.sh, or set SUBQ)" >&2; exit 2; }
for t in $TASKS; do [ -f "configs/synthetic/$t.yaml" ] || { echo "no task config configs/synthetic/$t.yaml" >&2; exit 2; }; done
for m in $MODELS; do [ -f "configs/synthetic/models/$m.yaml" ] || { echo "no model config configs/synthetic/models/$m.yaml" >&2; exit 2; }; done
if [ -z "$OUTP" ]; then
  kind=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | awk '{print tolower($NF)}')
  OUTP=bench/results/synthetic-compare-${kind:-cpu}
fi
mkdir -p "$WORK" "$(dirname "$OUTP")"
cmds="$WORK/commands.txt"
: > "$cmds"

run_one() {  # task model
  local t=$1 m=$2 name="$1-$2"
  local args=(train --config "configs/synthetic/$t.yaml" --config "configs/synthetic/models/$m.yaml"
              --set run.out_dir="$WORK" --set run.name="$name" --set run.device="$DEVICE")
  [ -n "$STEPS" ] && args+=(--set train.steps="$STEPS")
  args+=("${EXTRA[@]}")
  echo "$SUBQ ${args[*]} && $SUBQ eval --run $WORK/$name" >> "$cmds"
  local pre=()
  [ -n "$TIME_LIMIT" ] && pre=(timeout -s TERM --kill-after=120 "$TIME_LIMIT")
  local rc=0
  "${pre[@]}" "$SUBQ" "${args[@]}" > "$WORK/$name.train.log" 2>&1 || rc=$?
  # 0 finished; 1 or 124: stopped early (signal), evaluated at its last checkpoint
  if { [ $rc = 0 ] || [ $rc = 1 ] || [ $rc = 124 ]; } && "$SUBQ" eval --run "$WORK/$name" > "$WORK/$name.eval.log" 2>&1; then
    echo "done   $name (train exit $rc)"
  else
    echo "FAILED $name (train exit $rc; see $WORK/$name.train.log / .eval.log)"
  fi
}

running=0
for t in $TASKS; do
  for m in $MODELS; do
    run_one "$t" "$m" &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then wait -n || true; running=$((running - 1)); fi
  done
done
wait || true

SUBQ_VERSION=$("$SUBQ" version 2>/dev/null | head -3 | tr '\n' ' ' || true)
python3 - "$WORK" "$OUTP" "$TASKS" "$MODELS" "$cmds" "$SUBQ_VERSION" <<'PY'
import glob, json, os, sys, datetime
work, outp, tasks, models, cmds, version = sys.argv[1:7]
tasks, models = tasks.split(), models.split()
rows, lens = [], set()
for t in tasks:
    for m in models:
        files = sorted(glob.glob(os.path.join(work, f"{t}-{m}", "eval", "synthetic-step-*.json")),
                       key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0]))
        r = {"task": t, "model": m, "acc": {}}
        if files:
            j = json.load(open(files[-1]))
            r["step"] = j.get("step")
            for l in j["lengths"]:
                r["acc"][l["len"]] = {k: l.get(k) for k in ("seq_acc", "tok_acc", "final_acc")}
                lens.add(l["len"])
        else:
            r["error"] = "no eval result (training or eval failed; see the run's logs)"
        rows.append(r)
lens = sorted(lens)
fmt = lambda v: "—" if v is None else f"{v:.3f}"
md = [f"# Synthetic state tracking: sequence accuracy by length", "",
      f"{datetime.datetime.utcnow().isoformat(timespec='seconds')}Z — {version.strip()}", "",
      "Train on lengths up to the task's train_len, evaluate at each length (sequence accuracy: every supervised",
      "position right; docs/synthetic.md). `step` is the checkpoint evaluated. Commands below.", "",
      "| task | model | step | " + " | ".join(f"L={l}" for l in lens) + " |",
      "|---|---|---|" + "---|" * len(lens)]
for r in rows:
    cells = [fmt(r["acc"].get(l, {}).get("seq_acc")) for l in lens] if r["acc"] else ["failed"] * len(lens)
    md.append(f"| {r['task']} | {r['model']} | {r.get('step', '—')} | " + " | ".join(cells) + " |")
md += ["", "Commands:", "", "```", open(cmds).read().strip(), "```", ""]
open(outp + ".md", "w").write("\n".join(md))
json.dump({"version": version.strip(), "rows": rows, "commands": open(cmds).read().splitlines()},
          open(outp + ".json", "w"), indent=2)
print("\n".join(md))
PY
