#!/usr/bin/env bash
# quickstart.sh — the README's main job: install what is missing, build, prepare the default code
# corpus (this machine's Python standard library and C++ headers) with a freshly trained tokenizer,
# train configs/quickstart.yaml (a tiny Llama-style model; ~5 minutes on a 2-core CPU), evaluate it on
# the held-out split, print a sample and write the HTML report.
# Extra arguments go to `subq train` (e.g. --set train.steps=100). Re-running resumes the run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
SUBQ=build/apps/subq
CORPUS=data/cache/code
if [ ! -f "$CORPUS/manifest.json" ]; then
  "$SUBQ" prepare code --out "$CORPUS"
else
  echo "[quickstart] corpus present: $CORPUS (delete it to rebuild)"
fi
"$SUBQ" train --config configs/quickstart.yaml "$@"
echo "[quickstart] held-out metrics:"
"$SUBQ" eval --run runs/quickstart
echo "[quickstart] a sample:"
"$SUBQ" generate --run runs/quickstart --prompt "def parse_args(" --max-new-tokens 160 \
        --temperature 0.8 --top-k 50 --seed 0
"$SUBQ" plot runs/quickstart
echo "[quickstart] done: runs/quickstart (report.html, metrics.jsonl, checkpoints/)"
