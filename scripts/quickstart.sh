#!/usr/bin/env bash
# The main pipeline, end to end, on a fresh machine: set up, then
#   collect real rollouts on an embedded Ray cluster -> summarise the dataset
# Later stages (train, simulate, act, forecast) are appended as they land.
# Outputs go under $SIMGAN_QUICKSTART_DIR (default: quickstart/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${SIMGAN_VENV:-.venv}/bin/activate"
export RAY_USAGE_STATS_ENABLED=0
OUT=${SIMGAN_QUICKSTART_DIR:-quickstart}
ENV_ID=${SIMGAN_ENV:-Pendulum-v1}
mkdir -p "$OUT"

echo "== 1. collect: 20,000 random-policy transitions of $ENV_ID on 2 Ray workers"
simgan collect --env "$ENV_ID" --steps 20000 --workers 2 --seed 0 --out "$OUT/data" --overwrite

echo "== 2. info"
simgan info "$OUT/data"
