#!/usr/bin/env bash
# DexVLA stage 2: Qwen2-VL + stage-1 ScaleDP trained jointly on robot data (ViT trained too).
# Every value below can be overridden from the environment; the defaults are the reference's.
#   MNOP=/path/to/Qwen2-VL-2B-Instruct DIT_PRETRAIN=/path/to/scaledp_stage1.ckpt OUTPUT=... bash scripts/train_dexvla_stage2.sh
# Extra arguments are passed on to train_vla.py (e.g. --max_steps 10 --use_cpu True).
set -euo pipefail
cd "$(dirname "$0")/.."

NUM_GPUS=${NUM_GPUS:-8}
MASTER_PORT=${MASTER_PORT:-29604}
ACTION_HEAD=${ACTION_HEAD:-scale_dp_policy}   # scale_dp_policy or unet_diffusion_policy
HEAD_SIZE=${HEAD_SIZE:-ScaleDP_H}
# ScaleDP takes a size preset and starts from stage-1 weights; the UNet head has neither.
if [ "$ACTION_HEAD" = scale_dp_policy ]; then
  DIT_PRETRAIN=${DIT_PRETRAIN:?set DIT_PRETRAIN to the stage-1 ScaleDP weights}
  HEAD_ARGS=(--policy_head_size "$HEAD_SIZE" --load_pretrain_dit True --pretrain_dit_path "$DIT_PRETRAIN")
else
  HEAD_ARGS=()
fi
MNOP=${MNOP:?set MNOP to the official Qwen2-VL-2B-Instruct directory}
TASKNAME=${TASKNAME:-example_tasks}
OUTPUT=${OUTPUT:?set OUTPUT to the output directory}
ZERO=${ZERO:-scripts/zero2.json}
BF16=${BF16:-True}
FLASH_ATTN=${FLASH_ATTN:-True}
# The reference clipped nothing (its DeepSpeed config has no gradient_clipping, and DeepSpeed 0.9
# defaulted to 0); zero*.json take this value ("auto"). MAX_GRAD_NORM=1.0 clips. See scripts/README.md.
MAX_GRAD_NORM=${MAX_GRAD_NORM:-0}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/build/torch_extensions}
mkdir -p "$OUTPUT"

# One node: --num_gpus. Several nodes: HOSTFILE=/path/to/hostfile (lines "host slots=8"), same script on node 0.
if [ -n "${HOSTFILE:-}" ]; then PLACEMENT=(--hostfile "$HOSTFILE"); else PLACEMENT=(--num_gpus="$NUM_GPUS" --num_nodes=1); fi
deepspeed --master_port "$MASTER_PORT" "${PLACEMENT[@]}" ./train_vla.py \
  --deepspeed "$ZERO" \
  --use_reasoning True \
  --lora_enable False \
  --action_dim 14 \
  --state_dim 14 \
  --flash_attn "$FLASH_ATTN" \
  --chunk_size 50 \
  --policy_head_type "$ACTION_HEAD" \
  "${HEAD_ARGS[@]}" \
  --image_size_stable "(320,240)" \
  --image_size_wrist "(320,240)" \
  --task_name "$TASKNAME" \
  --model_name_or_path "$MNOP" \
  --version v0 \
  --tune_mm_mlp_adapter True \
  --freeze_vision_tower False \
  --freeze_backbone False \
  --mm_use_im_start_end False \
  --mm_use_im_patch_token False \
  --image_aspect_ratio pad \
  --bf16 "$BF16" \
  --output_dir "$OUTPUT" \
  --max_steps 100000 \
  --per_device_train_batch_size 12 \
  --gradient_accumulation_steps 1 \
  --save_strategy "steps" \
  --save_steps 10000 \
  --save_total_limit 50 \
  --learning_rate 2e-5 \
  --max_grad_norm "$MAX_GRAD_NORM" \
  --weight_decay 0. \
  --warmup_ratio 0.01 \
  --lr_scheduler_type "constant" \
  --logging_steps 50 \
  --tf32 True \
  --model_max_length 2048 \
  --gradient_checkpointing True \
  --dataloader_num_workers 8 \
  --lazy_preprocess True \
  --policy_class "$ACTION_HEAD" \
  --concat "token_cat" \
  --report_to tensorboard \
  --logging_dir "$OUTPUT/log" \
  "$@" 2>&1 | tee "$OUTPUT/log.log"
