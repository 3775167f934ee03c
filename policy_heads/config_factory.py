"""Build a diffusion-expert config from the VLA's training arguments."""

from transformers import PreTrainedConfig

from .configuration_scaledp import ScaleDPPolicyConfig
from .configuration_unet import UnetDiffusionPolicyConfig

POLICY_HEAD_CONFIGS: dict[str, type[PreTrainedConfig]] = {
    ScaleDPPolicyConfig.model_type: ScaleDPPolicyConfig,
    UnetDiffusionPolicyConfig.model_type: UnetDiffusionPolicyConfig,
}


def build_policy_head_config(
    policy_head_type: str,
    cond_dim: int,
    state_dim: int,
    action_dim: int,
    chunk_size: int,
    model_size: str | None = None,
    **overrides,
) -> PreTrainedConfig:
    """One entry point for both heads.

    Args:
        policy_head_type: `"scale_dp_policy"` or `"unet_diffusion_policy"` (the model types).
        cond_dim: width of the condition hidden states (the VLM hidden size, 1536 for Qwen2-VL-2B).
        state_dim: robot state width.
        action_dim: action width.
        chunk_size: action steps per chunk (the prediction horizon).
        model_size: ScaleDP preset (e.g. `"ScaleDP_H"`); must be None for the UNet.
        **overrides: any other config field.

    Returns:
        `ScaleDPPolicyConfig` or `UnetDiffusionPolicyConfig`; `AutoModel.from_config` builds the head from it.
    """
    if policy_head_type not in POLICY_HEAD_CONFIGS:
        raise ValueError(f"policy_head_type={policy_head_type!r} is not one of {sorted(POLICY_HEAD_CONFIGS)}")
    common = {"state_dim": state_dim, "action_dim": action_dim, "prediction_horizon": chunk_size}
    if policy_head_type == UnetDiffusionPolicyConfig.model_type:
        if model_size is not None:
            raise ValueError(
                f"model_size={model_size!r} is a ScaleDP preset; policy_head_type={policy_head_type!r} has none"
            )
        return UnetDiffusionPolicyConfig(global_cond_dim=cond_dim, **common, **overrides)
    return ScaleDPPolicyConfig(cond_dim=cond_dim, model_size=model_size, **common, **overrides)


__all__ = ["POLICY_HEAD_CONFIGS", "build_policy_head_config"]
