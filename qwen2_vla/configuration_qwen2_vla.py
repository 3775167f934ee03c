"""VLA configs: a stock Qwen2-VL / Qwen2.5-VL / Qwen3-VL config plus the diffusion expert and the fusion switches."""

# No `from __future__ import annotations`: `@strict` validates field types from the live annotations.
from dataclasses import dataclass
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig, Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig
from transformers.configuration_utils import SubConfigSpec

import policy_heads  # noqa: F401  (registers the heads' configs with AutoConfig)
from data_utils.image_utils import parse_image_size
from policy_heads import POLICY_HEAD_CONFIGS

# Field of each head's config that must equal the VLM hidden size.
_COND_DIM_FIELD = {"scale_dp_policy": "cond_dim", "unet_diffusion_policy": "global_cond_dim"}


# The VLA fields and checks, shared by every backbone's config: a dataclass so that each config subclass
# (which ``PreTrainedConfig.__init_subclass__`` turns into a dataclass) collects them as its own fields.
@dataclass(kw_only=True, repr=False, eq=False)
class VLAConfigMixin:
    r"""
    The VLA's part of a backbone config ([`Qwen2VLAConfig`], [`Qwen2_5_VLAConfig`], [`Qwen3VLAConfig`]).

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

    # model_type of the stock backbone config this VLA config extends (the key of ``VLA_CONFIG_CLASSES``).
    backbone_model_type: ClassVar[str]

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
    def from_vlm_config(cls, base: PreTrainedConfig, policy_head_config: PreTrainedConfig, **fields: Any):
        """Turn a stock (downloaded) backbone config into this VLA config without editing its config.json."""
        if base.model_type != cls.backbone_model_type:
            raise ValueError(
                f"{cls.__name__} extends a {cls.backbone_model_type!r} config, got model_type={base.model_type!r}"
            )
        data = base.to_dict()
        for key in ("model_type", "architectures", "transformers_version"):
            data.pop(key, None)
        data.update(policy_head_type=policy_head_config.model_type, policy_head_config=policy_head_config.to_dict())
        data.update(fields)
        return cls(**data)

    @classmethod
    def from_qwen2_vl_config(cls, base: PreTrainedConfig, policy_head_config: PreTrainedConfig, **fields: Any):
        """The former name of :meth:`from_vlm_config` (kept for existing callers)."""
        return cls.from_vlm_config(base, policy_head_config, **fields)


# Optional: a stock checkpoint has no head yet; a VLA checkpoint's head config is rebuilt through AutoConfig.
_HEAD_SPEC = SubConfigSpec(AutoConfig, model_type="scale_dp_policy", optional=True)


@strict
class Qwen2VLAConfig(VLAConfigMixin, Qwen2VLConfig):
    """Configuration of [`Qwen2VLAForConditionalGeneration`]: a stock ``Qwen2VLConfig`` plus the VLA fields
    (see [`VLAConfigMixin`])."""

    model_type: ClassVar[str] = "qwen2_vla"
    backbone_model_type: ClassVar[str] = "qwen2_vl"
    sub_configs_defaults: ClassVar[dict[str, Any]] = {**Qwen2VLConfig.sub_configs_defaults, "policy_head_config": _HEAD_SPEC}


@strict
class Qwen2_5_VLAConfig(VLAConfigMixin, Qwen2_5_VLConfig):
    """Configuration of [`Qwen2_5_VLAForConditionalGeneration`]: a stock ``Qwen2_5_VLConfig`` plus the VLA fields."""

    model_type: ClassVar[str] = "qwen2_5_vla"
    backbone_model_type: ClassVar[str] = "qwen2_5_vl"
    sub_configs_defaults: ClassVar[dict[str, Any]] = {
        **Qwen2_5_VLConfig.sub_configs_defaults,
        "policy_head_config": _HEAD_SPEC,
    }


@strict
class Qwen3VLAConfig(VLAConfigMixin, Qwen3VLConfig):
    """Configuration of [`Qwen3VLAForConditionalGeneration`]: a stock ``Qwen3VLConfig`` plus the VLA fields."""

    model_type: ClassVar[str] = "qwen3_vla"
    backbone_model_type: ClassVar[str] = "qwen3_vl"
    sub_configs_defaults: ClassVar[dict[str, Any]] = {**Qwen3VLConfig.sub_configs_defaults, "policy_head_config": _HEAD_SPEC}


# Stock backbone model_type -> the VLA config that extends it (one entry per supported backbone).
VLA_CONFIG_CLASSES: dict[str, type[VLAConfigMixin]] = {
    cls.backbone_model_type: cls for cls in (Qwen2VLAConfig, Qwen2_5_VLAConfig, Qwen3VLAConfig)
}


def vla_config_from_vlm(base: PreTrainedConfig, policy_head_config: PreTrainedConfig, **fields: Any) -> VLAConfigMixin:
    """The VLA config of a stock backbone config (``qwen2_vl``, ``qwen2_5_vl`` or ``qwen3_vl``), picked by its
    model_type; a clear error naming the supported ones for anything else."""
    if base.model_type not in VLA_CONFIG_CLASSES:
        raise ValueError(
            f"model_type={base.model_type!r} is not a supported backbone; expected one of {sorted(VLA_CONFIG_CLASSES)}"
        )
    return VLA_CONFIG_CLASSES[base.model_type].from_vlm_config(base, policy_head_config, **fields)
