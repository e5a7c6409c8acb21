#!/usr/bin/env bash
# The main pipeline, end to end, on a fresh machine (about 10 minutes on 2 CPU cores):
#   set up -> collect real rollouts on an embedded Ray cluster -> train the conditional GAN
#   -> run the learned env -> train SAC inside it -> evaluate SAC in the real env -> forecast with fan charts.
# Outputs go under $SIMGAN_QUICKSTART_DIR (default: quickstart/). SIMGAN_ENV picks another env id.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${SIMGAN_VENV:-.venv}/bin/activate"
export RAY_USAGE_STATS_ENABLED=0
OUT=${SIMGAN_QUICKSTART_DIR:-quickstart}
ENV_ID=${SIMGAN_ENV:-Pendulum-v1}
mkdir -p "$OUT"
rm -rf "$OUT/data" "$OUT/gan" "$OUT/sac" "$OUT/forecast"

echo "== 1/7 collect: 20,000 random-policy transitions of $ENV_ID on 2 Ray workers (embedded local cluster)"
simgan collect --env "$ENV_ID" --steps 20000 --workers 2 --seed 0 --out "$OUT/data"

echo "== 2/7 info: the verified dataset"
simgan info "$OUT/data"

echo "== 3/7 train: conditional GAN world model (TensorBoard: tensorboard --logdir $OUT/gan/tb)"
simgan train --data "$OUT/data" --out "$OUT/gan" --seed 0

echo "== 4/7 simulate: 1,024 learned envs stepped together"
simgan simulate --model "$OUT/gan" --num-envs 1024 --steps 200 --seed 0

echo "== 5/7 agent: SAC trained only inside the learned env"
simgan agent train --algo sac --sim "$OUT/gan" --num-envs 8 --steps 8000 --learning-starts 1000 \
  --updates-per-step 0.5 --seed 0 --out "$OUT/sac"

echo "== 6/7 evaluate: the same agent in the real $ENV_ID"
simgan agent eval --agent "$OUT/sac" --env "$ENV_ID" --episodes 10 --json "$OUT/sac/real_eval.json"

echo "== 7/7 forecast: 1,000 futures from held-out start states under the agent, with fan charts"
simgan forecast --model "$OUT/gan" --states-from "$OUT/data" --num-states 2 --horizon 50 --samples 1000 \
  --policy "$OUT/sac" --seed 0 --out "$OUT/forecast"

echo "done: dataset $OUT/data, model $OUT/gan, agent $OUT/sac, fan charts $OUT/forecast/fan_state*.png"
