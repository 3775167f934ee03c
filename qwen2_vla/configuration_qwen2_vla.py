"""``Qwen2VLAConfig``: a stock ``Qwen2VLConfig`` plus the diffusion expert and the fusion switches."""

# No `from __future__ import annotations`: `@strict` validates field types from the live annotations.
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig, Qwen2VLConfig
from transformers.configuration_utils import SubConfigSpec

import policy_heads  # noqa: F401  (registers the heads' configs with AutoConfig)
from data_utils.image_utils import parse_image_size
from policy_heads import POLICY_HEAD_CONFIGS

# Field of each head's config that must equal the VLM hidden size.
_COND_DIM_FIELD = {"scale_dp_policy": "cond_dim", "unet_diffusion_policy": "global_cond_dim"}


@strict
class Qwen2VLAConfig(Qwen2VLConfig):
    r"""
    Configuration of [`Qwen2VLAForConditionalGeneration`].

    Args:
        policy_head_type (`str`, defaults to `"scale_dp_policy"`): model type of the diffusion expert.
        policy_head_config (`dict` or `PreTrainedConfig`, *optional*): the expert's config; its
            `model_type` must equal `policy_head_type`, its condition width the text hidden size.
        using_film (`bool`, defaults to True): fuse prompt and reasoning through FiLM into one
            condition token; without it the head receives all hidden states.
        llm_loss_weight (`float`, defaults to 1.0): `loss = action_loss + llm_loss_weight * llm_loss`.
        image_size_stable (`str`, *optional*): `"(width,height)"` the non-wrist cameras were resized to
            in training; saved so that inference pre-processes exactly as training did.
        image_size_wrist (`str`, *optional*): the same for wrist cameras.
        image_crop_ratio (`float`, *optional*): the crop training applied after that resize (0.95 when it
            augmented: random there, a centre crop at inference); `None`: no crop.
        use_reasoning (`bool`, *optional*): whether training answered with the sub-step reasoning
            (``reasoning + "Next action:<|im_end|>"``) or with ``<|im_end|>`` alone; inference
            generates or appends the answer accordingly.
    """

    model_type: ClassVar[str] = "qwen2_vla"
    sub_configs_defaults: ClassVar[dict[str, Any]] = {
        **Qwen2VLConfig.sub_configs_defaults,
        "policy_head_config": SubConfigSpec(AutoConfig, model_type="scale_dp_policy", optional=True),
    }

    policy_head_type: str = "scale_dp_policy"
    policy_head_config: dict | PreTrainedConfig | None = None
    using_film: bool = True
    llm_loss_weight: int | float = 1.0
    image_size_stable: str | None = None
    image_size_wrist: str | None = None
    image_crop_ratio: float | None = None
    use_reasoning: bool | None = None

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        if self.policy_head_type not in POLICY_HEAD_CONFIGS:
            raise ValueError(f"policy_head_type={self.policy_head_type!r} is not one of {sorted(POLICY_HEAD_CONFIGS)}")
        head = self.policy_head_config
        if head is not None:
            if head.model_type != self.policy_head_type:
                raise ValueError(
                    f"policy_head_type={self.policy_head_type!r} but policy_head_config.model_type="
                    f"{head.model_type!r}; they must name the same head"
                )
            cond_field = _COND_DIM_FIELD[head.model_type]
            hidden = self.text_config.hidden_size
            if getattr(head, cond_field) != hidden:
                raise ValueError(
                    f"policy_head_config.{cond_field}={getattr(head, cond_field)} must equal "
                    f"text_config.hidden_size={hidden} (the head is conditioned on the VLM's hidden states)"
                )
        if self.llm_loss_weight < 0:
            raise ValueError(f"llm_loss_weight must be >= 0, got {self.llm_loss_weight}")
        if self.image_crop_ratio is not None and not 0.0 < self.image_crop_ratio <= 1.0:
            raise ValueError(f"image_crop_ratio must be in (0, 1] or None, got {self.image_crop_ratio}")
        for name in ("image_size_stable", "image_size_wrist"):
            value = getattr(self, name)
            if value is not None:
                width, height = parse_image_size(value)  # raises, naming the format, on bad input
                setattr(self, name, f"({width},{height})")

    @classmethod
    def from_qwen2_vl_config(
        cls, base: Qwen2VLConfig, policy_head_config: PreTrainedConfig, **fields: Any
    ) -> "Qwen2VLAConfig":
        """Turn a stock (downloaded) Qwen2-VL config into a VLA config without editing its config.json."""
        data = base.to_dict()
        for key in ("model_type", "architectures", "transformers_version"):
            data.pop(key, None)
        data.update(policy_head_type=policy_head_config.model_type, policy_head_config=policy_head_config.to_dict())
        data.update(fields)
        return cls(**data)
