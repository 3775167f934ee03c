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

No flag is a silent no-op. Every field either changes what a run does, or is a *legacy* field
(``LEGACY_FIELDS``): a LLaVA/TinyVLA flag the reference declared (its scripts pass several of them)
but this code has no switch for. A legacy field accepts only the value that describes this code --
the one the reference's launch scripts pass, where they pass one -- and any other value is an error
that names the field and what to use instead. ``check_argument_combinations`` checks the
combinations that span two dataclasses. scripts/README.md lists every default that differs from
the reference's.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import transformers
from transformers.utils import is_torch_tf32_available

from data_utils.image_utils import parse_image_size
from data_utils.normalization import ACTION_NORMALIZATIONS, STATE_NORMALIZATIONS, STATS_SOURCES
from policy_heads import POLICY_HEAD_CONFIGS, SCALEDP_PRESETS
from policy_heads.configuration_common import (
    OPTIONAL_FIELDS,
    check_condition_tokens,
    check_prediction_type,
    check_state_dropout,
)

logger = logging.getLogger(__name__)

SCALE_DP_POLICY = "scale_dp_policy"
UNET_DIFFUSION_POLICY = "unet_diffusion_policy"
# Preset the reference used when `--policy_head_size` is not given for ScaleDP.
DEFAULT_SCALEDP_SIZE = "ScaleDP_H"
# Parts of the model LoRA can adapt (`--lora_module "vit llm"`): vision tower, language model, diffusion head.
LORA_MODULES = ("vit", "llm", "di_head")
# 16 means "not quantised"; the precision of unquantised weights follows --bf16/--fp16.
QUANT_BITS = (4, 8, 16)
QUANT_TYPES = ("fp4", "nf4")


@dataclass(frozen=True)
class LegacyField:
    """A reference flag with no switch here: only ``accepted`` parses.

    ``meaning``: what the accepted value says about this code; ``instead``: what to use for the
    behaviour another value would ask for.
    """

    accepted: Any
    meaning: str
    instead: str

    def check(self, name: str, value: Any) -> None:
        if value != self.accepted:
            accepted = f"omit --{name}" if self.accepted is None else f"accepted: --{name} {self.accepted}"
            raise ValueError(f"{name}={value!r} is not supported: {self.meaning}. {self.instead} ({accepted})")


LEGACY_FIELDS: dict[str, LegacyField] = {
    # ModelArguments
    "version": LegacyField(
        "v0",
        "prompts always use the Qwen2-VL chat template saved with the processor (there are no LLaVA "
        "conversation templates)",
        "Edit the chat template in the model directory to change the prompt format.",
    ),
    "model_pretrain": LegacyField(
        "",
        "a stage-2 LoRA checkpoint is not given as a separate path",
        "Pass the stage-2 checkpoint (full or LoRA, merged on load) as --model_name_or_path with --load_pretrain True.",
    ),
    "mm_use_im_start_end": LegacyField(
        False,
        "no <im_start>/<im_end> tokens are added (the Qwen2-VL chat template already brackets each "
        "image with <|vision_start|>/<|vision_end|>)",
        "Drop the flag.",
    ),
    "mm_use_im_patch_token": LegacyField(
        False,
        "no <im_patch> tokens are added (the Qwen2-VL processor expands <|image_pad|> itself)",
        "Drop the flag.",
    ),
    "concat": LegacyField(
        "token_cat",
        "the hidden states always reach the head as one fused token per sample",
        "Use --using_film True (FiLM fusion) or --using_film False (masked mean of the hidden states).",
    ),
    "is_tinyvla": LegacyField(
        False,
        "the TinyVLA variant is not implemented",
        "For a VLA without the FiLM fusion use --using_film False.",
    ),
    # DataArguments
    "history_images_length": LegacyField(
        1,
        "frame history is not implemented: a sample carries the current frame of each camera",
        "Drop the flag.",
    ),
    "lazy_preprocess": LegacyField(
        True,
        "samples are always preprocessed lazily, one at a time in EpisodicDataset.__getitem__",
        "Drop the flag.",
    ),
    "select_seg_token_mask": LegacyField(False, "there is no segmentation token", "Drop the flag."),
    "is_multimodal": LegacyField(
        True,
        "every sample carries the task's camera images (text-only samples are not supported)",
        "Drop the flag.",
    ),
    "image_aspect_ratio": LegacyField(
        "pad",
        "frames are resized to --image_size_stable/--image_size_wrist, which the reference's 'pad' did "
        "too (it never read this flag)",
        "Set the frame sizes with --image_size_stable and --image_size_wrist.",
    ),
    # TrainingArguments
    "tune_mm_mlp_adapter": LegacyField(
        True,
        "the reference's scripts pass True and its code never read it: what trains is chosen by the "
        "freeze and LoRA flags",
        "Use --freeze_backbone, --freeze_vision_tower and --lora_enable/--lora_module.",
    ),
    "group_by_modality_length": LegacyField(
        False,
        "samples are drawn by the EpisodeSampler (every sample has the same modalities)",
        "Weight datasets with TASK_CONFIGS[...]['sample_weights'] or use --episode_first True.",
    ),
    "lora_task_type": LegacyField(
        None,
        "LoRA wraps the VLA as a plain PeftModel (no task-specific PEFT wrapper)",
        "Drop the flag.",
    ),
    # PEFT's bias="all"/"lora_only" would mark biases trainable, but load_model's freezing (what
    # trains follows the freeze flags, and LoRA needs a frozen backbone) freezes them again.
    "lora_bias": LegacyField(
        "none",
        "biases are not trained in a LoRA run (LoRA needs --freeze_backbone True and "
        "--freeze_vision_tower True, and frozen parts keep their biases frozen)",
        "Drop the flag.",
    ),
    "lora_weight_path": LegacyField(
        "",
        "LoRA weights are not loaded from a separate path",
        "Pass the LoRA checkpoint as --model_name_or_path (it is merged onto its base model).",
    ),
    "max_new_tokens": LegacyField(
        None,
        "training generates no tokens",
        "It is an inference setting: pass --max_new_tokens to evaluate/eval_dexvla.py or evaluate/serve_policy.py.",
    ),
}


def _legacy_help(name: str) -> str:
    legacy = LEGACY_FIELDS[name]
    return f"Reference flag, only {legacy.accepted!r}: {legacy.meaning}."


def _check_legacy_fields(args: Any) -> None:
    """Reject any legacy field of ``args`` (a dataclass instance) that is not at its accepted value."""
    for spec in dataclasses.fields(args):
        if spec.name in LEGACY_FIELDS:
            LEGACY_FIELDS[spec.name].check(spec.name, getattr(args, spec.name))


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
    state_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Probability that a training sample's robot state is hidden from the action head (zeros), so "
            "the head must read the cameras rather than extrapolate the state; 1.0: never seen, at inference "
            "too. 0 (the reference): always seen."
        },
    )

    condition_norm: bool = field(
        default=False,
        metadata={
            "help": "ScaleDP: standardise the pooled VLM condition per feature (batch norm) before the head reads it. "
            "False (the reference): raw."
        },
    )

    prediction_type: str = field(
        default="epsilon",
        metadata={
            "help": "What the diffusion head predicts: 'epsilon' the noise (the reference) or 'sample' the clean action "
            "chunk (every noise level then rewards reading the observation)."
        },
    )
    cross_attention: bool = field(
        default=False,
        metadata={
            "help": "ScaleDP: every block also attends to the VLM's token states (a small object's place in the image "
            "survives; mean pooling averages it away). False (the reference): the pooled condition only."
        },
    )

    condition_tokens_from: str = field(
        default=OPTIONAL_FIELDS["condition_tokens_from"],
        metadata={
            "help": "With --cross_attention: the token states the head reads, 'last_hidden_state' (the language "
            "model's last layer) or 'input_embeddings' (its input: the image tokens are the vision tower's merged "
            "patches, not yet mixed with the text by any language layer)."
        },
    )

    condition_token_norm: bool = field(
        default=False,
        metadata={
            "help": "With --cross_attention: standardise the condition tokens per place and feature (batch "
            "statistics in training, running ones at inference) before the head reads them, so a small object's change to its patch is not lost under "
            "what all tokens share."
        },
    )

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
        check_state_dropout(self.state_dropout, self.state_dim)
        check_prediction_type(self.prediction_type)
        for option in ("condition_norm", "cross_attention"):
            if getattr(self, option) and self.policy_head_type != SCALE_DP_POLICY:
                raise ValueError(f"{option}=True is a ScaleDP option but policy_head_type={self.policy_head_type!r}")
        check_condition_tokens(self.cross_attention, self.condition_tokens_from, self.condition_token_norm)


@dataclass
class ModelArguments:
    """Which model to start from and how the VLM is fused with the expert."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A stock Qwen2-VL, Qwen2.5-VL or Qwen3-VL directory (stage 2 / DiVLA) or a VLA checkpoint "
            "(stage 3); required."
        },
    )
    version: str = field(default="v0", metadata={"help": _legacy_help("version")})
    model_pretrain: str = field(default="", metadata={"help": _legacy_help("model_pretrain")})
    mm_use_im_start_end: bool = field(default=False, metadata={"help": _legacy_help("mm_use_im_start_end")})
    # The reference defaulted to True (never read); its scripts pass False, which is what this code does.
    mm_use_im_patch_token: bool = field(default=False, metadata={"help": _legacy_help("mm_use_im_patch_token")})
    # The reference defaulted to "None" (never read); its scripts pass token_cat.
    concat: str = field(default="token_cat", metadata={"help": _legacy_help("concat")})
    policy_class: str | None = field(
        default=None,
        metadata={"help": "The head type again, as the reference's scripts pass it; must equal --policy_head_type."},
    )
    using_film: bool = field(
        default=True,
        metadata={
            "help": "Fuse prompt and reasoning with FiLM into one token; False: masked mean of the hidden states."
        },
    )
    load_pretrain_dit: bool = field(default=False, metadata={"help": "Initialise the expert from a pretrained DiT."})
    pretrain_dit_path: str | None = field(
        default=None, metadata={"help": "Pretrained ScaleDP weights; read only with --load_pretrain_dit True."}
    )
    is_tinyvla: bool = field(default=False, metadata={"help": _legacy_help("is_tinyvla")})

    def __post_init__(self) -> None:
        _check_legacy_fields(self)
        if self.load_pretrain_dit and not self.pretrain_dit_path:
            raise ValueError("load_pretrain_dit=True needs pretrain_dit_path (the pretrained ScaleDP weights)")
        if self.pretrain_dit_path and not self.load_pretrain_dit:
            # Otherwise stage 2 would silently start from a random expert.
            raise ValueError(
                f"pretrain_dit_path={self.pretrain_dit_path!r} is read only with load_pretrain_dit=True; "
                "pass --load_pretrain_dit True or drop --pretrain_dit_path"
            )


@dataclass
class DataArguments:
    """What one training sample looks like and how samples are drawn."""

    task_name: str = field(
        default="example_tasks",
        metadata={
            "help": "Key of TASK_CONFIGS in aloha_scripts/constants.py; several keys separated by commas train one "
            "model over all of them (and over their embodiments)."
        },
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
    # Not in the reference (its min-max / z-score are the defaults); recorded in dataset_stats.json for inference.
    action_normalization: str = field(
        default="minmax",
        metadata={
            "help": f"One of {list(ACTION_NORMALIZATIONS)}: actions scaled to [-1, 1] by their min/max (the "
            "reference), or by their 1st/99th percentiles as openpi/pi0.5 (robust to outliers)."
        },
    )
    state_normalization: str = field(
        default="zscore",
        metadata={"help": f"One of {list(STATE_NORMALIZATIONS)}: state z-scored (the reference) or q01/q99 to [-1, 1]."},
    )
    norm_stats_source: str = field(
        default="data",
        metadata={
            "help": f"One of {list(STATS_SOURCES)}: statistics from a pass over the episodes, or read from the "
            "meta/stats.json of LeRobot roots (every dataset dir must be one; not with --delta_control)."
        },
    )
    history_images_length: int = field(default=1, metadata={"help": _legacy_help("history_images_length")})
    # The reference defaulted lazy_preprocess to False, is_multimodal to False and image_aspect_ratio
    # to "square" (none of them read); the values here are what this code does / its scripts pass.
    lazy_preprocess: bool = field(default=True, metadata={"help": _legacy_help("lazy_preprocess")})
    select_seg_token_mask: bool = field(default=False, metadata={"help": _legacy_help("select_seg_token_mask")})
    is_multimodal: bool = field(default=True, metadata={"help": _legacy_help("is_multimodal")})
    image_aspect_ratio: str = field(default="pad", metadata={"help": _legacy_help("image_aspect_ratio")})

    def __post_init__(self) -> None:
        _check_legacy_fields(self)
        if self.chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {self.chunk_size}")
        for name, allowed in (
            ("action_normalization", ACTION_NORMALIZATIONS),
            ("state_normalization", STATE_NORMALIZATIONS),
            ("norm_stats_source", STATS_SOURCES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {list(allowed)}")
        if self.norm_stats_source == "dataset_meta" and self.delta_control:
            raise ValueError(
                "norm_stats_source='dataset_meta' with delta_control=True: meta/stats.json describes absolute "
                "actions, not the deltas trained on; use --norm_stats_source data"
            )
        for name in ("image_size_stable", "image_size_wrist"):
            try:
                parse_image_size(getattr(self, name))
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None


NON_FINITE_LOSS_ACTIONS = ("stop", "skip")


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
    # The reference defaulted to False; all its scripts pass True; it never read the flag.
    tune_mm_mlp_adapter: bool = field(default=True, metadata={"help": _legacy_help("tune_mm_mlp_adapter")})
    group_by_modality_length: bool = field(default=False, metadata={"help": _legacy_help("group_by_modality_length")})
    # --- stages -------------------------------------------------------------------------------
    load_pretrain: bool = field(
        default=False, metadata={"help": "Stage 3: --model_name_or_path is a trained VLA (stage-2 checkpoint)."}
    )
    llm_loss_weight: float = field(default=1.0, metadata={"help": "loss = action_loss + llm_loss_weight * llm_loss."})
    # --- failures -----------------------------------------------------------------------------
    non_finite_loss: str = field(
        default="stop",
        metadata={
            "help": "What a non-finite training loss does: 'stop' (raise on every process, naming the step and the "
            "loss, before anything is saved) or 'skip' (that micro-batch gives no gradient; counted as "
            "skipped_batches in the logs)."
        },
    )
    # --- EMA ----------------------------------------------------------------------------------
    using_ema: bool = field(default=False, metadata={"help": "Keep an EMA of the trainable weights (saved beside)."})
    ema_decay: float = field(default=0.9999, metadata={"help": "EMA decay per optimizer step."})
    # --- LoRA ---------------------------------------------------------------------------------
    lora_enable: bool = field(default=False)
    lora_module: str = field(default="vit llm", metadata={"help": f"Space-separated subset of {list(LORA_MODULES)}."})
    lora_task_type: str | None = field(default=None, metadata={"help": _legacy_help("lora_task_type")})
    lora_r: int = field(default=64)
    lora_alpha: int = field(default=256)
    lora_dropout: float = field(default=0.05)
    lora_weight_path: str = field(default="", metadata={"help": _legacy_help("lora_weight_path")})
    lora_bias: str = field(default="none", metadata={"help": _legacy_help("lora_bias")})
    non_lora_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the trainable non-LoRA modules when LoRA is on."}
    )
    # --- quantisation -------------------------------------------------------------------------
    bits: int = field(default=16, metadata={"help": f"Weight bits, one of {list(QUANT_BITS)} (4/8 need CUDA)."})
    double_quant: bool = field(default=True, metadata={"help": "Quantise the quantisation statistics too."})
    quant_type: str = field(default="nf4", metadata={"help": f"One of {list(QUANT_TYPES)}."})
    # --- inference settings (rejected here: see LEGACY_FIELDS) ---------------------------------
    max_new_tokens: int | None = field(default=None, metadata={"help": _legacy_help("max_new_tokens")})

    def __post_init__(self) -> None:
        _check_legacy_fields(self)
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
            raise ValueError(
                f"bits={self.bits} is not one of {list(QUANT_BITS)} (16: not quantised; the precision of "
                "unquantised weights follows --bf16/--fp16)"
            )
        if self.bits in (4, 8) and not self.lora_enable:
            raise ValueError(f"bits={self.bits} quantises frozen weights: it needs lora_enable=True to train anything")
        if self.quant_type not in QUANT_TYPES:
            raise ValueError(f"quant_type={self.quant_type!r} is not one of {list(QUANT_TYPES)}")
        if self.llm_loss_weight < 0:
            raise ValueError(f"llm_loss_weight must be >= 0, got {self.llm_loss_weight}")
        if self.using_ema and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"using_ema=True needs ema_decay in (0, 1), got {self.ema_decay}")
        if self.model_max_length <= 0:
            raise ValueError(f"model_max_length must be positive, got {self.model_max_length}")
        if self.non_finite_loss not in NON_FINITE_LOSS_ACTIONS:
            raise ValueError(f"non_finite_loss={self.non_finite_loss!r} is not one of {list(NON_FINITE_LOSS_ACTIONS)}")
        super().__post_init__()

    @property
    def lora_modules(self) -> list[str]:
        """``lora_module`` as a list: ``"vit llm"`` -> ``["vit", "llm"]`` (commas also accepted)."""
        return self.lora_module.replace(",", " ").split()


def check_argument_combinations(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    head_args: ActionHeadArguments,
) -> None:
    """Checks that span two dataclasses (each one checks its own fields in ``__post_init__``).

    Fills ``model_args.policy_class`` with the head type when it was not given.
    """
    if model_args.policy_class is None:
        model_args.policy_class = head_args.policy_head_type
    elif model_args.policy_class != head_args.policy_head_type:
        # The reference's scripts pass the head type twice; the head is built from --policy_head_type.
        raise ValueError(
            f"policy_class={model_args.policy_class!r} differs from policy_head_type="
            f"{head_args.policy_head_type!r}: the head is built from --policy_head_type; pass the same value "
            "to both or drop --policy_class"
        )


__all__ = [
    "LEGACY_FIELDS",
    "ActionHeadArguments",
    "DataArguments",
    "LORA_MODULES",
    "LegacyField",
    "ModelArguments",
    "TrainingArguments",
    "check_argument_combinations",
]
