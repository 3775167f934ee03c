"""DexVLA's vision-language-action model on Qwen2-VL.

Importing this package registers ``qwen2_vla`` with the transformers Auto classes, and teaches the
loader the legacy key layout of downloaded Qwen2-VL checkpoints for the VLA class as well.
"""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from qwen2_vla.configuration_qwen2_vla import Qwen2VLAConfig
from qwen2_vla.modeling_qwen2_vla import Qwen2VLAActionOutput, Qwen2VLAForConditionalGeneration, Qwen2VLAOutput

AutoConfig.register(Qwen2VLAConfig.model_type, Qwen2VLAConfig, exist_ok=True)
AutoModelForImageTextToText.register(Qwen2VLAConfig, Qwen2VLAForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(Qwen2VLAConfig, Qwen2VLAForConditionalGeneration, exist_ok=True)

# The renamings transformers applies to Qwen2VLForConditionalGeneration (``visual.*`` -> ``model.visual.*``,
# ``model.layers.*`` -> ``model.language_model.layers.*``) are looked up by class name: register ours too.
_BASE_MAPPING = get_checkpoint_conversion_mapping("Qwen2VLForConditionalGeneration")
if _BASE_MAPPING is not None:
    register_checkpoint_conversion_mapping(Qwen2VLAForConditionalGeneration.__name__, _BASE_MAPPING, overwrite=True)

__all__ = ["Qwen2VLAActionOutput", "Qwen2VLAConfig", "Qwen2VLAForConditionalGeneration", "Qwen2VLAOutput"]
