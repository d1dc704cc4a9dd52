#!/usr/bin/env bash
# build.sh — configure and build subq (Ninja, ccache when present). Runs setup.sh first unless
# SUBQ_NO_SETUP=1.
#   SUBQ_BUILD_DIR   build directory (default: build)
#   SUBQ_BUILD_TYPE  Release (default), RelWithDebInfo, Debug
#   SUBQ_CMAKE_ARGS  extra CMake arguments, e.g. "-DSUBQ_CUDA=OFF"
#   SUBQ_JOBS        parallel jobs (default: number of cores)
#   SUBQ_BUILD_TARGETS  build only these targets (e.g. "subq" for a quick benchmark build; default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SUBQ_NO_SETUP:-0}" = 1 ] || scripts/setup.sh
BUILD_DIR=${SUBQ_BUILD_DIR:-build}
# let ccache reuse objects across checkouts in different folders (CI clones elsewhere)
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
. scripts/python.sh
PY=$(subq_python)
# shellcheck disable=SC2086
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="${SUBQ_BUILD_TYPE:-Release}" \
      -DPython3_EXECUTABLE="$(command -v "$PY")" ${SUBQ_CMAKE_ARGS:-} > "$BUILD_DIR.configure.log" 2>&1 \
  || { cat "$BUILD_DIR.configure.log"; echo "[build] cmake configure failed (log above)" >&2; exit 1; }
grep -E "^-- subq:" "$BUILD_DIR.configure.log" || true
# shellcheck disable=SC2086
cmake --build "$BUILD_DIR" -j "${SUBQ_JOBS:-$(nproc)}" ${SUBQ_BUILD_TARGETS:+--target $SUBQ_BUILD_TARGETS}
echo "[build] ok: $BUILD_DIR/apps/subq"
