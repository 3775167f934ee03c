#!/usr/bin/env bash
# The main job on the embedded default: tiny offline Qwen2-VL + generated example episodes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ART=${DEXVLA_ARTIFACTS:-artifacts}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

echo "== 1. tiny Qwen2-VL -> $ART/tiny_qwen2_vl"
$PY scripts/make_tiny_qwen2_vl.py "$ART/tiny_qwen2_vl"
echo "== 2. example episodes -> $ART/example_episodes"
$PY scripts/make_example_episodes.py "$ART/example_episodes"
echo "== 3. integrity check"
$PY -m data_utils.check_data_integrity "$ART/example_episodes" \
    --camera_names cam_high cam_left_wrist cam_right_wrist --state_dim 14 --action_dim 14
echo "== 4. dataset statistics (task example_tasks)"
$PY scripts/show_dataset_stats.py --task_name example_tasks --out "$ART"
echo "== 5. train stage 2 then stage 3 (train_vla.py on CPU) -> outputs/tiny_cpu"
bash scripts/train_tiny_cpu.sh
echo "== 6. replay evaluation of the stage-3 checkpoint -> outputs/eval/replay (JSON + plot)"
$PY -m evaluate.eval_dexvla --ckpt outputs/tiny_cpu/stage3 --robot replay \
    --episodes "$ART/example_episodes/episode_0.hdf5" --out outputs/eval/replay
