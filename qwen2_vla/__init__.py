"""DexVLA's vision-language-action model on a Qwen2-VL, Qwen2.5-VL or Qwen3-VL backbone.

Importing this package registers the VLA model types (``qwen2_vla``, ``qwen2_5_vla``, ``qwen3_vla``) with the
transformers Auto classes, and teaches the loader each backbone's legacy key layout of downloaded
checkpoints for the VLA class as well.
"""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from qwen2_vla.configuration_qwen2_vla import (
    VLA_CONFIG_CLASSES,
    Qwen2_5_VLAConfig,
    Qwen2VLAConfig,
    Qwen3VLAConfig,
    VLAConfigMixin,
    vla_config_from_vlm,
)
from qwen2_vla.modeling_qwen2_vla import (
    VLA_MODEL_CLASSES,
    Qwen2_5_VLAForConditionalGeneration,
    Qwen2VLAActionOutput,
    Qwen2VLAForConditionalGeneration,
    Qwen2VLAOutput,
    Qwen3VLAForConditionalGeneration,
    VLAMixin,
    vla_model_class,
)

for _config_class, _model_class in VLA_MODEL_CLASSES.items():
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModelForImageTextToText.register(_config_class, _model_class, exist_ok=True)
    AutoModelForCausalLM.register(_config_class, _model_class, exist_ok=True)
    # The renamings transformers applies to the stock class (Qwen2-VL and Qwen2.5-VL: ``visual.*`` ->
    # ``model.visual.*``, ``model.layers.*`` -> ``model.language_model.layers.*``) are looked up by class name:
    # register the VLA class under the same ones (Qwen3-VL checkpoints need none).
    _stock_class = next(base for base in _model_class.__mro__[1:] if base is not VLAMixin)
    _mapping = get_checkpoint_conversion_mapping(_stock_class.__name__)
    if _mapping is not None:
        register_checkpoint_conversion_mapping(_model_class.__name__, _mapping, overwrite=True)

__all__ = [
    "VLA_CONFIG_CLASSES",
    "VLA_MODEL_CLASSES",
    "Qwen2VLAActionOutput",
    "Qwen2VLAConfig",
    "Qwen2VLAForConditionalGeneration",
    "Qwen2VLAOutput",
    "Qwen2_5_VLAConfig",
    "Qwen2_5_VLAForConditionalGeneration",
    "Qwen3VLAConfig",
    "Qwen3VLAForConditionalGeneration",
    "VLAConfigMixin",
    "VLAMixin",
    "vla_config_from_vlm",
    "vla_model_class",
]
