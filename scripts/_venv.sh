# Sourced by scripts/serve and scripts/test: create or update the project-local
# virtual environment .venv at the repository root.  Idempotent: a second run
# only checks that the pinned set is installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[nx47] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.nx47-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/_venv.sh" | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[nx47] installing dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch: the CPU build, pinned (an unpinned torch pulls a multi-GB CUDA build).
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  # the torch pin again in the same command: no extra (nnunetv2) may replace the CPU build
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dashboard,test,dask,nnunet]" "torch==2.13.0"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
