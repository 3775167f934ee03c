#!/usr/bin/env bash
# Closed-loop simulation benchmark (see scripts/sim_benchmark.py): record scripted transfer-cube demonstrations,
# train stage 2 of the tiny model on CPU, evaluate in gym-aloha on unseen seeds, write summary.json/summary.md.
#
#   bash scripts/sim_benchmark.sh                 # about 2 h on 2 CPU cores; re-run to resume
#   bash scripts/sim_benchmark.sh --smoke --out /tmp/sim_smoke
#   bash scripts/sim_benchmark.sh --stages eval report --checkpoints 5000 10000
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { make venv >/dev/null && PY=.venv/bin/python; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PY" scripts/sim_benchmark.py "$@"
