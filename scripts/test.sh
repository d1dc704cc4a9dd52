#!/usr/bin/env bash
# test.sh — the README's test command: installs what is missing (setup.sh, with the PyPI packages the
# golden tests compare against), builds, and runs every CPU-labelled test. Extra arguments go to ctest
# (e.g. scripts/test.sh -R tokenizer).
set -euo pipefail
cd "$(dirname "$0")/.."
export SUBQ_TEST_EXTRAS=${SUBQ_TEST_EXTRAS:-1}
scripts/setup.sh
# tests that compare against PyPI packages call `python3`: make it the interpreter setup.sh used
. scripts/python.sh
PY=$(command -v "$(subq_python)")
export PATH="$(dirname "$PY"):$PATH"
SUBQ_NO_SETUP=1 scripts/build.sh
ctest --test-dir "${SUBQ_BUILD_DIR:-build}" -L cpu --output-on-failure -j "${SUBQ_TEST_JOBS:-2}" "$@"
