#!/usr/bin/env bash
# Stage 2 then stage 3 of DexVLA on the tiny offline Qwen2-VL and the generated example episodes, on
# CPU in a few minutes: the same train_vla.py as the GPU scripts, with small sizes.
#
#   bash scripts/train_tiny_cpu.sh                      # one process
#   LAUNCHER=torchrun NPROC=2 bash scripts/train_tiny_cpu.sh
#   LAUNCHER=deepspeed NPROC=2 bash scripts/train_tiny_cpu.sh   # ZeRO-2 on CPU (gloo)
#
# Environment: OUTPUT (default outputs/tiny_cpu), MODEL (default $ART/tiny_qwen2_vl), STAGE2_STEPS,
# STAGE3_STEPS, STAGE3_LORA=1 for a LoRA stage 3 (merged export in $OUTPUT/stage3/merged).
# Extra arguments go to both train_vla.py runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ART=${DEXVLA_ARTIFACTS:-artifacts}
export DEXVLA_ARTIFACTS=$ART
MODEL=${MODEL:-$ART/tiny_qwen2_vl}
OUTPUT=${OUTPUT:-outputs/tiny_cpu}
STAGE2_STEPS=${STAGE2_STEPS:-1500}
STAGE3_STEPS=${STAGE3_STEPS:-300}
LAUNCHER=${LAUNCHER:-python}
NPROC=${NPROC:-2}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Tiny matrices: one thread per process is ~100x faster than two that spin against each other.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export DS_ACCELERATOR=cpu
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/build/torch_extensions}

[ -f "$MODEL/config.json" ] || $PY scripts/make_tiny_qwen2_vl.py "$MODEL"
ls "$ART"/example_episodes/*.hdf5 >/dev/null 2>&1 || $PY scripts/make_example_episodes.py "$ART/example_episodes"

case "$LAUNCHER" in
  python) RUN=("$PY") ;;
  torchrun) RUN=("$PY" -m torch.distributed.run --nproc_per_node "$NPROC" --master_port "${MASTER_PORT:-29511}") ;;
  deepspeed) RUN=(.venv/bin/deepspeed --num_gpus "$NPROC" --master_port "${MASTER_PORT:-29512}"); EXTRA_DS=(--deepspeed scripts/zero2.json) ;;
  *) echo "LAUNCHER must be python, torchrun or deepspeed" >&2; exit 2 ;;
esac

COMMON=(
  --task_name example_tasks
  --use_cpu True
  --use_reasoning True
  --state_dim 14 --action_dim 14
  --chunk_size 16
  --policy_head_type scale_dp_policy --policy_head_size ScaleDP_tiny
  --image_size_stable "(56,56)" --image_size_wrist "(56,56)"
  --per_device_train_batch_size 8
  --gradient_accumulation_steps 1
  --learning_rate 1e-3 --weight_decay 0.0
  --logging_steps 100
  --save_strategy steps --save_total_limit 2
  --dataloader_num_workers 0
  --report_to tensorboard
  --tf32 True
  ${EXTRA_DS[@]+"${EXTRA_DS[@]}"}
)

echo "== stage 2: $MODEL -> $OUTPUT/stage2 ($LAUNCHER)"
"${RUN[@]}" train_vla.py "${COMMON[@]}" \
  --model_name_or_path "$MODEL" \
  --output_dir "$OUTPUT/stage2" --logging_dir "$OUTPUT/stage2/log" \
  --max_steps "$STAGE2_STEPS" --save_steps "$STAGE2_STEPS" \
  --warmup_ratio 0.05 --lr_scheduler_type constant \
  "$@"

STAGE3_ARGS=(--lora_enable False)
if [ "${STAGE3_LORA:-0}" = 1 ]; then
  STAGE3_ARGS=(--lora_enable True --lora_module "vit llm" --lora_r 8 --lora_alpha 16
               --freeze_backbone True --freeze_vision_tower True --non_lora_lr 1e-3)
fi
echo "== stage 3: $OUTPUT/stage2/checkpoint-$STAGE2_STEPS -> $OUTPUT/stage3"
"${RUN[@]}" train_vla.py "${COMMON[@]}" \
  --model_name_or_path "$OUTPUT/stage2/checkpoint-$STAGE2_STEPS" --load_pretrain True \
  --output_dir "$OUTPUT/stage3" --logging_dir "$OUTPUT/stage3/log" \
  --max_steps "$STAGE3_STEPS" --save_steps "$STAGE3_STEPS" \
  --warmup_ratio 0.05 --lr_scheduler_type cosine \
  "${STAGE3_ARGS[@]}" "$@"
FINAL=$OUTPUT/stage3
[ "${STAGE3_LORA:-0}" = 1 ] && FINAL=$OUTPUT/stage3/merged
echo "== done: final model in $FINAL (config, weights, processor, dataset_stats.json); TensorBoard: $OUTPUT/*/log"
