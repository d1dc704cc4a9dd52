#!/usr/bin/env bash
# setup.sh — installs everything subq needs to build and test, idempotently.
#
# Used by the README, CI (.ci/run via scripts/test.sh), the Dockerfile and the GPU check script.
# Each step first checks whether its dependency is already there and skips it if so, so a second run
# takes seconds. On a machine without network (the GPU image) nothing is fetched: every dependency must
# already be present, and a missing one is reported with the package that provides it.
#
# Environment:
#   SUBQ_PYTHON        python interpreter whose torch provides LibTorch (default: see scripts/python.sh)
#   SUBQ_SKIP_APT=1    never call apt-get (report missing system packages instead)
#   SUBQ_TEST_EXTRAS=1 also install the PyPI packages the golden tests compare against
#                      (tokenizers, transformers, safetensors; flash-linear-attention 0.6.0 for the Gated
#                      DeltaNet export check: ~17 MB of Python plus einops, no compiled code — it imports
#                      triton, which PyPI's default Linux torch wheel already depends on); without them
#                      those tests skip.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/python.sh
. "$ROOT/scripts/python.sh"
PY=$(subq_python)
TORCH_VERSION=2.11.0

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# --- system packages (Debian 12 / Ubuntu 24.04 names) ------------------------------------------------
APT_PKGS=(build-essential cmake ninja-build git pkg-config python3 python3-pip python3-venv
          libyaml-cpp-dev libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev)
# Catch2: Debian 12 packages v2 as "catch2"; Ubuntu 24.04 packages v3 as "catch2" too.
APT_PKGS+=(catch2)
# Optional: speeds up rebuilds; installed where apt works, never required.
OPT_PKGS=(ccache)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  # Headers may be present without the Debian package (e.g. built from source on the GPU image).
  really_missing=()
  for p in "${missing[@]}"; do
    case "$p" in
      libyaml-cpp-dev)   [ -e /usr/include/yaml-cpp/yaml.h ] || [ -e /usr/local/include/yaml-cpp/yaml.h ] || really_missing+=("$p");;
      libspdlog-dev)     [ -e /usr/include/spdlog/spdlog.h ] || [ -e /usr/local/include/spdlog/spdlog.h ] || really_missing+=("$p");;
      libcli11-dev)      [ -e /usr/include/CLI/CLI.hpp ] || [ -e /usr/local/include/CLI/CLI.hpp ] || really_missing+=("$p");;
      nlohmann-json3-dev)[ -e /usr/include/nlohmann/json.hpp ] || [ -e /usr/local/include/nlohmann/json.hpp ] || really_missing+=("$p");;
      catch2)            ls /usr/include/catch2 /usr/local/include/catch2 >/dev/null 2>&1 || really_missing+=("$p");;
      build-essential|pkg-config|git|libfmt-dev) command -v g++ >/dev/null || really_missing+=("$p");;
      cmake)             command -v cmake >/dev/null || really_missing+=("$p");;
      python3|python3-pip|python3-venv) "$PY" -m pip --version >/dev/null 2>&1 || really_missing+=("$p");;
      ninja-build)       command -v ninja >/dev/null || really_missing+=("$p");;
      *)                 really_missing+=("$p");;
    esac
  done
  missing=("${really_missing[@]}")
fi
if ((${#missing[@]})); then
  if [ "${SUBQ_SKIP_APT:-0}" = 1 ] || ! command -v apt-get >/dev/null; then
    die "missing system packages: ${missing[*]} (install them with apt-get, or unset SUBQ_SKIP_APT)"
  fi
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  say "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || die "apt-get update failed: no network? install these by hand: ${missing[*]}"
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install failed for: ${missing[*]}"
else
  say "system packages: present"
fi
if [ "${SUBQ_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null; then
  for p in "${OPT_PKGS[@]}"; do
    command -v "$p" >/dev/null && continue
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$p" >/dev/null 2>&1 \
      && say "installed optional $p" || say "optional $p not installed (builds work without it)"
  done
fi

# --- LibTorch through the torch wheel ------------------------------------------------------------------
have_torch() { "$PY" -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$TORCH_VERSION' else 1)" 2>/dev/null; }
if have_torch; then
  say "torch $("$PY" -c 'import torch;print(torch.__version__)'): present"
else
  say "installing torch==$TORCH_VERSION from PyPI (first time only; large download)"
  if ! "$PY" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION" numpy 2> "$ROOT/.pip-error.log"; then
    if grep -q externally-managed "$ROOT/.pip-error.log" && [ -z "${SUBQ_PYTHON:-}" ]; then
      # PEP 668 system Python: use a project virtual environment instead (scripts/python.sh finds it)
      say "system Python refuses pip installs; creating $ROOT/.venv"
      python3 -m venv "$ROOT/.venv" || die "python3 -m venv failed (apt-get install python3-venv)"
      PY="$ROOT/.venv/bin/python3"
      "$PY" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION" numpy \
        || die "pip install torch==$TORCH_VERSION into .venv failed (no network?)"
    else
      cat "$ROOT/.pip-error.log" >&2
      die "pip install torch==$TORCH_VERSION failed (no network? on an offline machine preinstall it)"
    fi
  fi
  rm -f "$ROOT/.pip-error.log"
  have_torch || die "torch $TORCH_VERSION still not importable by $PY"
fi

# --- optional PyPI packages used only by golden tests ----------------------------------------------------
if [ "${SUBQ_TEST_EXTRAS:-0}" = 1 ]; then
  need=()
  "$PY" -c "import tokenizers" 2>/dev/null || need+=(tokenizers)
  # transformers >= 4.56: the xLSTM export test needs xLSTMForCausalLM (4.55+), check_hf_export.py dtype= (4.56+)
  "$PY" -c "from transformers import xLSTMForCausalLM" 2>/dev/null || need+=("transformers>=4.56")
  "$PY" -c "import safetensors" 2>/dev/null || need+=(safetensors)
  # fla pins transformers>=5.6.2,<6; pip upgrades an older transformers to satisfy it
  # (checked through package metadata: importing fla takes seconds, it loads its Triton kernels)
  "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('flash-linear-attention') != '0.6.0')" \
    2>/dev/null \
    || need+=(flash-linear-attention==0.6.0 fla-core==0.6.0)
  if ((${#need[@]})); then
    say "installing test extras: ${need[*]}"
    "$PY" -m pip install -q --disable-pip-version-check "${need[@]}" \
      || say "warning: could not install ${need[*]}; the golden tests that need them will skip"
  else
    say "test extras: present"
  fi
fi
say "done"
