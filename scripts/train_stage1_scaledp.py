"""Stage 1 of DexVLA: pretrain the ScaleDP diffusion expert alone (the reference withholds this script).

The expert is conditioned on a small timm image encoder (all cameras) and the robot state instead of the VLM, and
trained on the project's episodes with `transformers.Trainer`. Stage 2 then initialises its expert from the result:

    python scripts/train_stage1_scaledp.py --task_name example_tasks --output_dir outputs/stage1 \\
        --policy_head_size ScaleDP_H --chunk_size 50 --state_dim 14 --action_dim 14 --max_steps 100000 --bf16 True
    python train_vla.py ... --load_pretrain_dit True --pretrain_dit_path outputs/stage1/policy_head

`--cond_dim` must equal the stage-2 VLM hidden size (1536 for Qwen2-VL-2B) for every expert weight to transfer:
the encoder features are projected to that width before the expert, exactly where the VLM's fused hidden state
enters in stage 2. Outputs in `output_dir`: the wrapper model (Trainer format), `policy_head/` (the expert alone,
`save_pretrained`), `dataset_stats.json`. `load_pretrained_dit` accepts `policy_head/`, `output_dir` itself and any
`checkpoint-N/` (it keeps the `policy_head.` tensors of the wrapper).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel, Trainer
from transformers.integrations import is_deepspeed_zero3_enabled

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aloha_scripts.constants import get_task_config  # noqa: E402
from data_utils.image_utils import parse_image_size  # noqa: E402
from data_utils.sampler import EpisodeSampler  # noqa: E402
from data_utils.utils import load_data  # noqa: E402
from policy_heads import SCALEDP_PRESETS, DiffusionPolicyOutput, build_policy_head_config  # noqa: E402
from qwen2_vla.trainer import AtomicCheckpointMixin, resume_arg  # noqa: E402

HEAD_DIR_NAME = "policy_head"


# ---------------------------------------------------------------------------------------------- arguments
@dataclass
class Stage1Arguments:
    """What to train on and the shape of the expert and its stand-in observation encoder."""

    task_name: str = field(default="example_tasks", metadata={"help": "Key of TASK_CONFIGS (aloha_scripts)."})
    chunk_size: int = field(default=50, metadata={"help": "Actions per sample (the expert's prediction horizon)."})
    policy_head_size: str = field(default="ScaleDP_H", metadata={"help": f"One of {list(SCALEDP_PRESETS)}."})
    cond_dim: int = field(
        default=1536, metadata={"help": "Condition width: the stage-2 VLM hidden size (Qwen2-VL-2B: 1536)."}
    )
    state_dim: int = field(default=14, metadata={"help": "Robot state (qpos) width."})
    action_dim: int = field(default=14, metadata={"help": "Action width."})
    image_encoder: str = field(default="resnet18", metadata={"help": "timm model name (built without download)."})
    image_encoder_checkpoint: str | None = field(
        default=None, metadata={"help": "Optional local encoder weights (.safetensors, or a torch state dict)."}
    )
    image_size: str | None = field(
        default=None, metadata={"help": "'(width,height)' the frames are resized to; default: as stored."}
    )
    delta_control: bool = field(default=False, metadata={"help": "Train on action deltas."})
    episode_first: bool = field(default=False, metadata={"help": "Sampler draws an episode first, then a step."})
    augment_images: bool | None = field(default=None, metadata={"help": "Image augmentation (default: on)."})

    def __post_init__(self) -> None:
        if self.policy_head_size not in SCALEDP_PRESETS:
            raise ValueError(f"policy_head_size={self.policy_head_size!r} is not one of {list(SCALEDP_PRESETS)}")
        for name in ("chunk_size", "cond_dim", "state_dim", "action_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.image_size is not None:
            parse_image_size(self.image_size)
        if self.image_encoder not in timm.list_models():
            raise ValueError(f"image_encoder={self.image_encoder!r} is not a timm model name")
        if self.image_encoder_checkpoint is not None and not os.path.isfile(self.image_encoder_checkpoint):
            raise FileNotFoundError(f"image_encoder_checkpoint={self.image_encoder_checkpoint!r} does not exist")


@dataclass
class Stage1TrainingArguments(transformers.TrainingArguments):
    """`transformers.TrainingArguments` with defaults for this script."""

    # The batches are dicts of tensors whose names match `ScaleDPStage1Policy.forward`.
    remove_unused_columns: bool = field(default=False)
    # Evaluation computes the loss from the target chunk.
    label_names: list[str] | None = field(default_factory=lambda: ["actions"])
    learning_rate: float = field(default=1e-4)
    weight_decay: float = field(default=0.0)
    save_strategy: str = field(default="steps")
    save_steps: float = field(default=10000)


# ---------------------------------------------------------------------------------------------- model
class Stage1PolicyConfig(PreTrainedConfig):
    """Config of the stage-1 wrapper: the expert's config (a dict, as the VLA stores it) and the encoder."""

    model_type = "scaledp_stage1_policy"

    head_config: dict | None = None
    image_encoder: str = "resnet18"
    num_cameras: int = 3
    image_size: list[int] | None = None  # [height, width], None: frames as stored


class ScaleDPStage1Policy(PreTrainedModel):
    """timm encoder over every camera -> projection to `cond_dim` -> ScaleDP expert with the robot state."""

    config_class = Stage1PolicyConfig
    base_model_prefix = "stage1"
    main_input_name = "images"

    def __init__(self, config: Stage1PolicyConfig) -> None:
        super().__init__(config)
        self.image_encoder = timm.create_model(config.image_encoder, pretrained=False, num_classes=0)
        head_config = AutoConfig.for_model(**config.head_config)
        features = self.image_encoder.num_features * config.num_cameras
        # Stands in for the VLM + fusion of stage 2: one (B, 1, cond_dim) token per sample.
        self.obs_proj = nn.Sequential(nn.Linear(features, head_config.cond_dim), nn.LayerNorm(head_config.cond_dim))
        self.policy_head = AutoModel.from_config(head_config)
        pretrained_cfg = getattr(self.image_encoder, "pretrained_cfg", {}) or {}
        self.register_buffer(
            "pixel_mean", torch.tensor(pretrained_cfg.get("mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pretrained_cfg.get("std", (0.5, 0.5, 0.5))).view(1, 3, 1, 1), persistent=False
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # timm and torch initialised the encoder and projection in their constructors (with the encoder's own
        # scheme); the expert, a PreTrainedModel, applies its own rules. Nothing to override here.
        return

    def forward(
        self,
        images: torch.Tensor,
        states: torch.Tensor,
        actions: torch.Tensor | None = None,
        is_pad: torch.Tensor | None = None,
    ) -> DiffusionPolicyOutput:
        """`images` `(B, num_cams, 3, H, W)` uint8, `states` `(B, state_dim)`, `actions` `(B, T, action_dim)`,
        `is_pad` `(B, T)`: the expert's loss, or sampled chunks `(B, chunk, action_dim)` without `actions`."""
        batch, cams = images.shape[:2]
        if cams != self.config.num_cameras:
            raise ValueError(f"got {cams} cameras, the model was built for {self.config.num_cameras}")
        dtype = self.obs_proj[0].weight.dtype
        pixels = images.flatten(0, 1).to(dtype) / 255.0
        if self.config.image_size is not None:
            pixels = F.interpolate(pixels, size=tuple(self.config.image_size), mode="bilinear", antialias=True)
        pixels = (pixels - self.pixel_mean.to(dtype)) / self.pixel_std.to(dtype)
        features = self.image_encoder(pixels).reshape(batch, -1)
        condition = self.obs_proj(features).unsqueeze(1)
        return self.policy_head(actions=actions, hidden_states=condition, states=states, is_pad=is_pad)


def load_encoder_checkpoint(encoder: nn.Module, path: str) -> None:
    """Local encoder weights: safetensors, or a torch state dict read with `weights_only=True` (no pickles)."""
    state = (
        load_file(path) if path.endswith(".safetensors") else torch.load(path, map_location="cpu", weights_only=True)
    )
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    result = encoder.load_state_dict(state, strict=False)
    print(
        f"image encoder weights from {path}: missing {len(result.missing_keys)} {result.missing_keys[:5]}, "
        f"unexpected {len(result.unexpected_keys)} {result.unexpected_keys[:5]}",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------- data + trainer
def collate_stage1(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """`EpisodicDataset` samples (no processor) -> the wrapper's inputs; the text fields are not used here."""
    return {
        "images": torch.stack([s["image"] for s in samples]),
        "states": torch.stack([s["state"] for s in samples]),
        "actions": torch.stack([s["action"] for s in samples]),
        "is_pad": torch.stack([s["is_pad"] for s in samples]),
    }


class Stage1Trainer(AtomicCheckpointMixin, Trainer):
    """`Trainer` drawing training steps with the project's `EpisodeSampler` (dataset weights, episode-first)."""

    def __init__(self, *args: Any, sampler_params: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sampler_params = sampler_params

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        if self.sampler_params is None:
            return super()._get_train_sampler(train_dataset)
        params = self.sampler_params["train"]
        return EpisodeSampler(
            episode_len_l=params["episode_len_l"],
            sample_weights=params.get("sample_weights"),
            episode_first=params.get("episode_first", False),
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            dataset=train_dataset if train_dataset is not None else self.train_dataset,
        )


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> tuple[Stage1Arguments, Stage1TrainingArguments]:
    parser = transformers.HfArgumentParser((Stage1Arguments, Stage1TrainingArguments))
    stage1_args, training_args = parser.parse_args_into_dataclasses(args=None if argv is None else list(argv))
    return stage1_args, training_args


def build_model(args: Stage1Arguments, num_cameras: int) -> ScaleDPStage1Policy:
    head_config = build_policy_head_config(
        "scale_dp_policy",
        cond_dim=args.cond_dim,
        state_dim=args.state_dim,
        action_dim=args.action_dim,
        chunk_size=args.chunk_size,
        model_size=args.policy_head_size,
    )
    image_size = None
    if args.image_size is not None:
        width, height = parse_image_size(args.image_size)
        image_size = [height, width]
    config = Stage1PolicyConfig(
        head_config=head_config.to_dict(),
        image_encoder=args.image_encoder,
        num_cameras=num_cameras,
        image_size=image_size,
    )
    model = ScaleDPStage1Policy(config)
    if args.image_encoder_checkpoint is not None:
        load_encoder_checkpoint(model.image_encoder, args.image_encoder_checkpoint)
    return model


def main(argv: Sequence[str] | None = None) -> Path:
    """Train and save; returns the path to give stage 2 as `--pretrain_dit_path` (on the main process)."""
    args, training_args = parse_args(argv)
    task = get_task_config(args.task_name)
    train_dataset, val_dataset, norm_stats, sampler_params = load_data(
        dataset_dir_l=task["dataset_dir"],
        name_filter=task["name_filter"],
        camera_names=task["camera_names"],
        batch_size_train=training_args.per_device_train_batch_size,
        batch_size_val=training_args.per_device_eval_batch_size,
        chunk_size=args.chunk_size,
        config={"data_args": args},  # delta_control, episode_first, augment_images
        policy_class="scale_dp_policy",
        stats_dir_l=task["stats_dir"],
        sample_weights=task["sample_weights"],
        train_ratio=task["train_ratio"],
        seed=training_args.seed,
        state_dim=args.state_dim,
        action_dim=args.action_dim,
    )
    model = build_model(args, num_cameras=len(task["camera_names"]))
    trainer = Stage1Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=val_dataset,
        data_collator=collate_stage1,
        sampler_params=sampler_params,
    )
    trainer.train(resume_from_checkpoint=resume_arg(training_args.resume_from_checkpoint))

    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))  # the wrapper; gathers sharded (ZeRO-3) weights
    if not trainer.is_world_process_zero():
        return output_dir
    norm_stats.save(output_dir)
    if is_deepspeed_zero3_enabled():
        # Partitioned parameters cannot be saved module by module; the wrapper checkpoint holds the expert.
        print(f"stage 1 done: expert in {output_dir} (stage 2: --pretrain_dit_path {output_dir})", flush=True)
        return output_dir
    head_dir = output_dir / HEAD_DIR_NAME
    trainer.accelerator.unwrap_model(trainer.model).policy_head.save_pretrained(head_dir)
    print(f"stage 1 done: expert saved to {head_dir} (stage 2: --pretrain_dit_path {head_dir})", flush=True)
    return head_dir


if __name__ == "__main__":
    main()
