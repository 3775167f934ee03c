#!/usr/bin/env bash
# DiVLA: Qwen2-VL with LoRA on the ViT and the LLM, a 1-D UNet diffusion head trained in full at
# non_lora_lr. At the end the LoRA weights are merged into $OUTPUT/merged (a plain VLA checkpoint).
#   MNOP=/path/to/Qwen2-VL-2B-Instruct OUTPUT=... bash scripts/train_divla.sh [extra train_vla.py args]
set -euo pipefail
cd "$(dirname "$0")/.."

NUM_GPUS=${NUM_GPUS:-8}
MASTER_PORT=${MASTER_PORT:-29604}
ACTION_HEAD=${ACTION_HEAD:-unet_diffusion_policy}
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
  --lora_enable True \
  --lora_module "vit llm" \
  --action_dim 14 \
  --state_dim 14 \
  --flash_attn "$FLASH_ATTN" \
  --chunk_size 16 \
  --load_pretrain_dit False \
  --policy_head_type "$ACTION_HEAD" \
  --image_size_stable "(320,240)" \
  --image_size_wrist "(320,240)" \
  --task_name "$TASKNAME" \
  --model_name_or_path "$MNOP" \
  --version v0 \
  --tune_mm_mlp_adapter True \
  --freeze_vision_tower True \
  --freeze_backbone True \
  --mm_use_im_start_end False \
  --mm_use_im_patch_token False \
  --image_aspect_ratio pad \
  --bf16 "$BF16" \
  --output_dir "$OUTPUT" \
  --max_steps 60000 \
  --per_device_train_batch_size 12 \
  --gradient_accumulation_steps 1 \
  --save_strategy "steps" \
  --save_steps 10000 \
  --save_total_limit 50 \
  --learning_rate 2e-5 \
  --max_grad_norm "$MAX_GRAD_NORM" \
  --non_lora_lr 2e-4 \
  --weight_decay 0. \
  --warmup_ratio 0.01 \
  --lr_scheduler_type "cosine" \
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
