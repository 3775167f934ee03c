"""Command-line arguments of ``train_vla.py``: four typed dataclasses parsed by ``HfArgumentParser``.

Field names and defaults follow the reference ``train_vla.py`` (seed notes: 参数配置) so that its
stage-2/3 and DiVLA scripts run unchanged. Where the reference's default was unusable (image sizes
that don't parse, a task that doesn't exist) a working value is used instead. Every dataclass
validates itself in ``__post_init__`` and names the fields of a bad combination.

Where a field lives (``all_config[...]``):

- ``model_args``: what model to build or load (``model_name_or_path``, fusion, pretrained DiT).
- ``data_args``: what the samples look like (task, chunk size, image sizes, reasoning, sampling).
- ``training_args``: ``transformers.TrainingArguments`` plus freezing, LoRA, quantisation, EMA, loss weights.
- ``action_head_args``: the diffusion expert (type, size, state/action widths).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import transformers
from transformers.utils import is_torch_tf32_available

from data_utils.image_utils import parse_image_size
from policy_heads import POLICY_HEAD_CONFIGS, SCALEDP_PRESETS

logger = logging.getLogger(__name__)

SCALE_DP_POLICY = "scale_dp_policy"
UNET_DIFFUSION_POLICY = "unet_diffusion_policy"
# Preset the reference used when `--policy_head_size` is not given for ScaleDP.
DEFAULT_SCALEDP_SIZE = "ScaleDP_H"
# Parts of the model LoRA can adapt (`--lora_module "vit llm"`): vision tower, language model, diffusion head.
LORA_MODULES = ("vit", "llm", "di_head")
LORA_BIASES = ("none", "all", "lora_only")
QUANT_BITS = (4, 8, 16, 32)
QUANT_TYPES = ("fp4", "nf4")


@dataclass
class ActionHeadArguments:
    """The diffusion expert ("action head")."""

    policy_head_type: str = field(
        default=SCALE_DP_POLICY, metadata={"help": f"Diffusion expert: one of {sorted(POLICY_HEAD_CONFIGS)}."}
    )
    policy_head_size: str | None = field(
        default=None,
        metadata={
            "help": f"ScaleDP preset, one of {list(SCALEDP_PRESETS)} (default {DEFAULT_SCALEDP_SIZE}); "
            "only for scale_dp_policy."
        },
    )
    state_dim: int = field(default=7, metadata={"help": "Robot state (qpos) width."})
    action_dim: int = field(default=10, metadata={"help": "Action width."})

    def __post_init__(self) -> None:
        if self.policy_head_type not in POLICY_HEAD_CONFIGS:
            raise ValueError(f"policy_head_type={self.policy_head_type!r} is not one of {sorted(POLICY_HEAD_CONFIGS)}")
        if self.policy_head_type == SCALE_DP_POLICY:
            if self.policy_head_size is None:
                self.policy_head_size = DEFAULT_SCALEDP_SIZE
            if self.policy_head_size not in SCALEDP_PRESETS:
                raise ValueError(f"policy_head_size={self.policy_head_size!r} is not one of {list(SCALEDP_PRESETS)}")
        elif self.policy_head_size is not None:
            raise ValueError(
                f"policy_head_size={self.policy_head_size!r} is a ScaleDP preset but policy_head_type="
                f"{self.policy_head_type!r}; drop --policy_head_size or use --policy_head_type {SCALE_DP_POLICY}"
            )
        for name in ("state_dim", "action_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class ModelArguments:
    """Which model to start from and how the VLM is fused with the expert."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A stock Qwen2-VL directory (stage 2 / DiVLA) or a Qwen2-VLA checkpoint (stage 3); required."
        },
    )
    version: str = field(default="v0", metadata={"help": "Conversation template version (kept for the scripts)."})
    model_pretrain: str = field(default="", metadata={"help": "Extra pretrained weights path (reference; unused)."})
    mm_use_im_start_end: bool = field(default=False)
    mm_use_im_patch_token: bool = field(default=True)
    concat: str = field(default="None", metadata={"help": "How hidden states reach the head (reference: token_cat)."})
    policy_class: str = field(default="droid_diffusion", metadata={"help": "Head class name (reference; informative)."})
    using_film: bool = field(default=True, metadata={"help": "Fuse prompt and reasoning with FiLM into one token."})
    load_pretrain_dit: bool = field(default=False, metadata={"help": "Initialise the expert from a pretrained DiT."})
    pretrain_dit_path: str | None = field(
        default=None, metadata={"help": "Pretrained ScaleDP weights; required with --load_pretrain_dit True."}
    )
    is_tinyvla: bool = field(default=False, metadata={"help": "TinyVLA variant (no FiLM); reference flag."})

    def __post_init__(self) -> None:
        if self.load_pretrain_dit and not self.pretrain_dit_path:
            raise ValueError("load_pretrain_dit=True needs pretrain_dit_path (the pretrained ScaleDP weights)")
        if self.is_tinyvla and self.using_film:
            raise ValueError("is_tinyvla=True expects using_film=False (TinyVLA feeds hidden states directly)")


@dataclass
class DataArguments:
    """What one training sample looks like and how samples are drawn."""

    task_name: str = field(
        default="example_tasks", metadata={"help": "Key of TASK_CONFIGS in aloha_scripts/constants.py."}
    )
    chunk_size: int = field(default=16, metadata={"help": "Actions per sample (the head's prediction horizon)."})
    image_size_stable: str = field(
        default="(320,240)", metadata={"help": "'(width,height)' of the non-wrist cameras' frames."}
    )
    image_size_wrist: str = field(default="(320,240)", metadata={"help": "'(width,height)' of the wrist cameras."})
    use_reasoning: bool = field(default=False, metadata={"help": "Supervise the sub-step reasoning as the answer."})
    delta_control: bool = field(default=False, metadata={"help": "Train on action deltas instead of absolute actions."})
    episode_first: bool = field(
        default=False, metadata={"help": "Sampler draws an episode first, then a step (short episodes weigh more)."}
    )
    augment_images: bool | None = field(
        default=None, metadata={"help": "Image augmentation; default: on for diffusion heads."}
    )
    skip_mirrored_data: bool = field(default=False, metadata={"help": "Skip episodes whose name says 'mirror'."})
    history_images_length: int = field(default=1, metadata={"help": "Frames of history per camera (1 = none)."})
    lazy_preprocess: bool = field(default=False)
    select_seg_token_mask: bool = field(default=False)
    is_multimodal: bool = field(default=False)
    image_aspect_ratio: str = field(default="square")

    def __post_init__(self) -> None:
        if self.chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {self.chunk_size}")
        if self.history_images_length != 1:
            raise ValueError(
                f"history_images_length={self.history_images_length}: only the current frame (1) is supported"
            )
        for name in ("image_size_stable", "image_size_wrist"):
            try:
                parse_image_size(getattr(self, name))
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    """``transformers.TrainingArguments`` with the reference's defaults and its VLA-specific fields."""

    # --- defaults the reference changed -------------------------------------------------------
    optim: str = field(default="adamw_torch")
    adam_beta1: float = field(default=0.9)
    adam_beta2: float = field(default=0.98)
    adam_epsilon: float = field(default=1e-7)
    # The collator's keys (actions, states, is_pad, ...) must reach forward().
    remove_unused_columns: bool = field(default=False)
    seed: int = field(default=0)
    logging_strategy: str = field(default="steps")
    logging_steps: float = field(default=10)
    save_steps: float = field(default=10)
    num_train_epochs: float = field(default=3)
    max_steps: int = field(default=5000)
    do_eval: bool = field(default=False)
    eval_steps: float | None = field(default=200)
    per_device_eval_batch_size: int = field(default=32)
    dataloader_pin_memory: bool = field(default=False)
    # --- fields transformers 5 dropped but the reference scripts pass -------------------------
    logging_dir: str | None = field(
        default=None, metadata={"help": "TensorBoard directory (default: <output_dir>/runs/<time>)."}
    )
    warmup_ratio: float = field(
        default=0.0, metadata={"help": "Linear warmup as a fraction of max_steps (becomes warmup_steps)."}
    )
    # --- backbone -----------------------------------------------------------------------------
    cache_dir: str | None = field(default=None)
    flash_attn: bool = field(default=False, metadata={"help": "Load the VLM with flash_attention_2 (CUDA only)."})
    model_max_length: int = field(default=2048, metadata={"help": "Maximum sequence length (tokens)."})
    freeze_vision_tower: bool = field(default=False, metadata={"help": "Freeze the ViT (its LoRA stays trainable)."})
    freeze_backbone: bool = field(default=False, metadata={"help": "Freeze the whole VLM (LoRA stays trainable)."})
    tune_mm_mlp_adapter: bool = field(default=False)
    group_by_modality_length: bool = field(default=False)
    # --- stages -------------------------------------------------------------------------------
    load_pretrain: bool = field(
        default=False, metadata={"help": "Stage 3: --model_name_or_path is a trained VLA (stage-2 checkpoint)."}
    )
    llm_loss_weight: float = field(default=1.0, metadata={"help": "loss = action_loss + llm_loss_weight * llm_loss."})
    # --- EMA ----------------------------------------------------------------------------------
    using_ema: bool = field(default=False, metadata={"help": "Keep an EMA of the trainable weights (saved beside)."})
    ema_decay: float = field(default=0.9999, metadata={"help": "EMA decay per optimizer step."})
    # --- LoRA ---------------------------------------------------------------------------------
    lora_enable: bool = field(default=False)
    lora_module: str = field(default="vit llm", metadata={"help": f"Space-separated subset of {list(LORA_MODULES)}."})
    lora_task_type: str = field(default="CAUSAL_LM")
    lora_r: int = field(default=64)
    lora_alpha: int = field(default=256)
    lora_dropout: float = field(default=0.05)
    lora_weight_path: str = field(default="")
    lora_bias: str = field(default="none", metadata={"help": f"One of {list(LORA_BIASES)}."})
    non_lora_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the trainable non-LoRA modules when LoRA is on."}
    )
    # --- quantisation -------------------------------------------------------------------------
    bits: int = field(default=16, metadata={"help": f"Weight bits, one of {list(QUANT_BITS)} (4/8 need CUDA)."})
    double_quant: bool = field(default=True, metadata={"help": "Quantise the quantisation statistics too."})
    quant_type: str = field(default="nf4", metadata={"help": f"One of {list(QUANT_TYPES)}."})
    # --- evaluation ---------------------------------------------------------------------------
    max_new_tokens: int = field(default=128, metadata={"help": "Reasoning tokens generated at inference."})

    def __post_init__(self) -> None:
        # The reference scripts pass --tf32 True; transformers raises where TF32 doesn't exist (CPU).
        if self.tf32 and not is_torch_tf32_available():
            logger.warning("tf32=True but this machine has no TF32 (needs an Ampere+ GPU); continuing with tf32=False")
            self.tf32 = False
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_ratio > 0:
            if self.warmup_steps:
                raise ValueError(
                    f"warmup_ratio={self.warmup_ratio} and warmup_steps={self.warmup_steps}: give only one of them"
                )
            # transformers 5 reads a warmup_steps below 1 as a fraction of the total steps.
            self.warmup_steps = self.warmup_ratio
        modules = self.lora_modules
        unknown = sorted(set(modules) - set(LORA_MODULES))
        if unknown or not modules:
            raise ValueError(f"lora_module={self.lora_module!r}: each entry must be one of {list(LORA_MODULES)}")
        if self.lora_bias not in LORA_BIASES:
            raise ValueError(f"lora_bias={self.lora_bias!r} is not one of {list(LORA_BIASES)}")
        if self.lora_enable and (self.lora_r <= 0 or self.lora_alpha <= 0):
            raise ValueError(
                f"lora_enable=True needs lora_r > 0 and lora_alpha > 0, got {self.lora_r}, {self.lora_alpha}"
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_enable and not (self.freeze_backbone and self.freeze_vision_tower):
            # A PEFT checkpoint holds the adapters and the head/fusion only: fully trained backbone
            # weights would be missing from every checkpoint-N and from a resumed run.
            raise ValueError(
                f"lora_enable=True needs freeze_backbone=True and freeze_vision_tower=True (got "
                f"{self.freeze_backbone}, {self.freeze_vision_tower}): LoRA checkpoints don't save full backbone weights"
            )
        if self.non_lora_lr is not None and not self.lora_enable:
            raise ValueError(
                f"non_lora_lr={self.non_lora_lr} only applies with lora_enable=True; drop it or turn LoRA on"
            )
        if self.bits not in QUANT_BITS:
            raise ValueError(f"bits={self.bits} is not one of {list(QUANT_BITS)}")
        if self.bits in (4, 8) and not self.lora_enable:
            raise ValueError(f"bits={self.bits} quantises frozen weights: it needs lora_enable=True to train anything")
        if self.lora_weight_path:
            raise ValueError(
                f"lora_weight_path={self.lora_weight_path!r} is not supported: pass the LoRA checkpoint as "
                "--model_name_or_path (it is merged onto its base model) instead"
            )
        if self.quant_type not in QUANT_TYPES:
            raise ValueError(f"quant_type={self.quant_type!r} is not one of {list(QUANT_TYPES)}")
        if self.llm_loss_weight < 0:
            raise ValueError(f"llm_loss_weight must be >= 0, got {self.llm_loss_weight}")
        if self.using_ema and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"using_ema=True needs ema_decay in (0, 1), got {self.ema_decay}")
        if self.model_max_length <= 0:
            raise ValueError(f"model_max_length must be positive, got {self.model_max_length}")
        super().__post_init__()

    @property
    def lora_modules(self) -> list[str]:
        """``lora_module`` as a list: ``"vit llm"`` -> ``["vit", "llm"]`` (commas also accepted)."""
        return self.lora_module.replace(",", " ").split()


__all__ = [
    "ActionHeadArguments",
    "DataArguments",
    "LORA_MODULES",
    "ModelArguments",
    "TrainingArguments",
]
