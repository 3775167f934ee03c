#!/usr/bin/env bash
# GPU suite: stage-2 training throughput/MFU and chunk latency at Qwen2-VL-2B's full shape in one short GPU slot
# (random weights, nothing downloaded). See benchmarks/gpu_suite.py's docstring.
#
#   bash benchmarks/gpu_suite.sh [--smoke] [--out DIR] [--budget_s 480]
#
# Writes DIR/results.json and DIR/results.md (default DIR: outputs/gpu_suite/<timestamp>) and prints the table.
# --smoke runs the same code on the CPU at tiny sizes (the test suite does). PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PYTHON" benchmarks/gpu_suite.py "$@"
