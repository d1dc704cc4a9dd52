# python.sh — sourced by the scripts: picks the Python whose torch provides LibTorch.
#   $SUBQ_PYTHON if set; else the project's .venv (created by setup.sh where the system Python refuses
#   pip installs, PEP 668); else python3.
subq_python() {
  if [ -n "${SUBQ_PYTHON:-}" ]; then echo "$SUBQ_PYTHON"; return; fi
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ -x "$root/.venv/bin/python3" ]; then echo "$root/.venv/bin/python3"; return; fi
  echo python3
}
