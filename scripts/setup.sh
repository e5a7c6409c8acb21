#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install simgan into it.
#
# torch is installed first and on its own, so that a machine without a GPU gets a CPU build
# (about 200 MB) instead of the multi-GB CUDA build that a plain `pip install torch` pulls:
#   1. a GPU is present (nvidia-smi works)           -> torch from PyPI (CUDA build)
#   2. a local CPU wheel is reachable offline         -> that one (pip's find-links / local indexes)
#   3. the PyTorch CPU index answers                  -> torch from it
#   4. otherwise                                      -> torch from PyPI
# Variables: PYTHON (interpreter for the venv, default python3), SIMGAN_VENV (default .venv),
#            SIMGAN_EXTRAS (default "dev,mujoco"), SIMGAN_TORCH_INDEX (force a torch index URL).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${SIMGAN_VENV:-.venv}
EXTRAS=${SIMGAN_EXTRAS:-dev,mujoco}
CPU_TORCH=${SIMGAN_CPU_TORCH:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
pip() { python -m pip "$@"; }

if ! python -c "import torch" >/dev/null 2>&1; then
  if [ -n "${SIMGAN_TORCH_INDEX:-}" ]; then
    echo "[setup] torch from $SIMGAN_TORCH_INDEX"
    pip install -q --index-url "$SIMGAN_TORCH_INDEX" "torch>=2.6"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] GPU found: torch with CUDA from PyPI"
    pip install -q "torch>=2.6"
  elif pip install -q --no-index --no-deps "$CPU_TORCH" >/dev/null 2>&1; then
    # --no-deps skipped torch's own requirements (sympy, networkx, ...): install them from the index now.
    mapfile -t torch_deps < <(python - <<'PY'
import importlib.metadata as md
from pip._vendor.packaging.requirements import Requirement
for line in md.requires("torch") or []:
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate({"extra": ""}):
        print(str(req).split(";")[0].strip())
PY
)
    [ "${#torch_deps[@]}" -eq 0 ] || pip install -q "${torch_deps[@]}"
    echo "[setup] no GPU: installed the local CPU build ($CPU_TORCH)"
  elif pip install -q --timeout 20 --retries 1 --index-url https://download.pytorch.org/whl/cpu "torch>=2.6"; then
    echo "[setup] no GPU: installed torch from the PyTorch CPU index"
  else
    echo "[setup] no GPU and no CPU index reachable: torch from PyPI"
    pip install -q "torch>=2.6"
  fi
fi

echo "[setup] installing simgan[$EXTRAS]"
pip install -q -e ".[$EXTRAS]"
python -c "import torch, gymnasium, ray, simgan; print(f'[setup] simgan {simgan.__version__} | torch {torch.__version__} (cuda: {torch.cuda.is_available()}) | gymnasium {gymnasium.__version__} | ray {ray.__version__}')"
