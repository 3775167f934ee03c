"""Diffusion experts (action heads) of DexVLA: ScaleDP and the 1-D conditional UNet.

Importing this package registers both with the transformers Auto classes, so
`AutoModel.from_config(AutoConfig.for_model("scale_dp_policy", ...))` builds a head.
"""

from transformers import AutoConfig, AutoModel

from .config_factory import POLICY_HEAD_CONFIGS, build_policy_head_config
from .configuration_scaledp import SCALEDP_PRESETS, ScaleDPPolicyConfig
from .configuration_unet import UnetDiffusionPolicyConfig
from .modeling_outputs import DiffusionPolicyOutput
from .modeling_scaledp import ScaleDP
from .modeling_unet import ConditionalUnet1D
from .pretrained_dit import DitLoadReport, load_pretrained_dit

# exist_ok: re-importing (e.g. a reloaded module in a notebook) must not fail.
AutoConfig.register(ScaleDPPolicyConfig.model_type, ScaleDPPolicyConfig, exist_ok=True)
AutoConfig.register(UnetDiffusionPolicyConfig.model_type, UnetDiffusionPolicyConfig, exist_ok=True)
AutoModel.register(ScaleDPPolicyConfig, ScaleDP, exist_ok=True)
AutoModel.register(UnetDiffusionPolicyConfig, ConditionalUnet1D, exist_ok=True)

__all__ = [
    "POLICY_HEAD_CONFIGS",
    "SCALEDP_PRESETS",
    "ConditionalUnet1D",
    "DiffusionPolicyOutput",
    "DitLoadReport",
    "ScaleDP",
    "ScaleDPPolicyConfig",
    "UnetDiffusionPolicyConfig",
    "build_policy_head_config",
    "load_pretrained_dit",
]
