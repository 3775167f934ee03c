"""Build the VLA for a training stage: load, freeze, LoRA, quantise, stage-1 DiT (seed: "模型加载").

What is trainable after ``load_model`` (and nothing else):

- ``freeze_backbone=False``: the whole VLM (vision tower per ``freeze_vision_tower``), ``lm_head`` included.
- ``freeze_vision_tower=True``: ``model.visual`` frozen except its LoRA weights; ``False``: trainable
  (even with a frozen backbone, as the reference).
- ``policy_head`` and ``fusion``: always (with ``lora_module`` containing ``di_head`` the head's
  linear layers get LoRA instead, and only its input embeddings train in full, as the reference).
- LoRA weights of the chosen ``lora_module`` parts ∈ {vit, llm, di_head}.

Precision (the download is saved in bfloat16, and transformers 5 loads a checkpoint in the dtype its
config names): trained parameters are always float32 master weights, whatever the checkpoint's dtype;
``--bf16``/``--fp16`` mean mixed precision (autocast), so frozen parts are held in that compute dtype to
save memory. Under DeepSpeed the engine casts the module to the compute dtype and keeps its own fp32
master copy, so the model is loaded in the compute dtype directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qwen2_vla.configuration_qwen2_vla import VLAConfigMixin
from qwen2_vla.modeling_qwen2_vla import VLAMixin, vla_model_class

# The same in every backbone (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): ``self.model.visual`` (with its merger and, for
# Qwen3-VL, its deepstack mergers) and ``self.model.language_model``; ``lm_head`` goes with the language model.
VISION_PREFIX = "model.visual."
LANGUAGE_PREFIX = "model.language_model."
HEAD_PREFIX = "policy_head."
FUSION_PREFIX = "fusion."
# With LoRA on the head, these head parts still train in full (the reference's non_lora_modules).
HEAD_FULLY_TRAINED = ("x_embedder", "cond_obs_emb", "norm_after_pool")


def lora_target_modules(model: nn.Module, lora_modules: list[str]) -> list[str]:
    """Full names of the ``nn.Linear`` layers LoRA adapts for the chosen parts.

    Exact names (not substrings such as "visual"): the reference's exclusion names never
    matched Qwen2-VL's modules, so its LoRA landed everywhere.
    """
    check_part_prefixes(model)
    prefixes = {"vit": VISION_PREFIX, "llm": LANGUAGE_PREFIX, "di_head": HEAD_PREFIX}
    chosen = tuple(prefixes[m] for m in lora_modules)
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not name.startswith(chosen):
            continue
        if name.startswith(HEAD_PREFIX) and any(part in name for part in HEAD_FULLY_TRAINED):
            continue
        targets.append(name)
    return targets


def check_part_prefixes(model: nn.Module) -> None:
    """Fail clearly when ``model`` lacks the vision tower or language model the freeze and LoRA flags address
    (``VISION_PREFIX``, ``LANGUAGE_PREFIX``): a backbone laid out otherwise would silently train everything."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = {name for name, _ in base.named_modules()}
    missing = [prefix.rstrip(".") for prefix in (VISION_PREFIX, LANGUAGE_PREFIX) if prefix.rstrip(".") not in names]
    if missing:
        raise ValueError(
            f"{type(base).__name__} has no module {' or '.join(missing)}: the freeze and LoRA flags cannot find "
            "its vision tower / language model"
        )


def _modules_to_save(model: nn.Module, lora_modules: list[str]) -> list[str]:
    """Modules trained in full beside LoRA (PEFT saves them with the adapter)."""
    names = ["fusion"] if getattr(model, "fusion", None) is not None else []
    if "di_head" in lora_modules:
        names += [f"{HEAD_PREFIX}{n}" for n, _ in model.policy_head.named_children() if n in HEAD_FULLY_TRAINED]
    else:
        names.append("policy_head")
    return names


def quantization_config(training_args: Any, compute_dtype: torch.dtype) -> Any | None:
    """``BitsAndBytesConfig`` for ``--bits 4/8``; a clear error where CUDA or bitsandbytes is missing."""
    if training_args.bits not in (4, 8):
        return None
    if not torch.cuda.is_available():
        raise RuntimeError(f"--bits {training_args.bits} quantises with bitsandbytes, which needs CUDA; none found")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise RuntimeError(f"--bits {training_args.bits} needs bitsandbytes: pip install bitsandbytes") from err
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=training_args.bits == 4,
        load_in_8bit=training_args.bits == 8,
        llm_int8_skip_modules=["policy_head", "fusion", "lm_head"],
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=training_args.double_quant,
        bnb_4bit_quant_type=training_args.quant_type,
    )


def compute_dtype_of(training_args: Any) -> torch.dtype:
    if getattr(training_args, "bf16", False):
        return torch.bfloat16
    if getattr(training_args, "fp16", False):
        return torch.float16
    return torch.float32


def load_dtype_of(training_args: Any) -> torch.dtype:
    """Dtype ``from_pretrained`` loads in: float32 master weights, or the compute dtype under DeepSpeed/bits."""
    if getattr(training_args, "deepspeed", None) or getattr(training_args, "bits", 16) in (4, 8):
        return compute_dtype_of(training_args)
    return torch.float32


def cast_parameters(model: nn.Module, dtype: torch.dtype, trainable: bool) -> None:
    """Cast the trainable (``trainable=True``) or the frozen floating-point parameters of ``model`` to ``dtype``.

    Trainable ones become fp32 master weights (an AdamW step of 2e-5 on 0.02 rounds away in bf16); frozen
    ones are held in the autocast compute dtype to save memory.
    """
    for param in model.parameters():
        if param.requires_grad == trainable and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


def dtype_report(model: nn.Module) -> str:
    """``part: trainable <dtypes> (n), frozen <dtypes> (n)`` for each part of the VLA, for the load log."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefixes = {VISION_PREFIX: "vision", LANGUAGE_PREFIX: "llm", HEAD_PREFIX: "policy_head", FUSION_PREFIX: "fusion"}
    parts: dict[str, dict[bool, dict[str, int]]] = {}
    for name, param in base.named_parameters():
        part = next((p for prefix, p in prefixes.items() if name.startswith(prefix)), name.split(".", 1)[0])
        counts = parts.setdefault(part, {True: {}, False: {}})[param.requires_grad]
        dtype = str(param.dtype).removeprefix("torch.")
        counts[dtype] = counts.get(dtype, 0) + param.numel()
    lines = []
    for part, by_trainable in parts.items():
        described = [
            f"{label} " + "/".join(f"{dtype} ({n:,})" for dtype, n in sorted(by_trainable[flag].items()))
            for flag, label in ((True, "trainable"), (False, "frozen"))
            if by_trainable[flag]
        ]
        lines.append(f"{part}: {', '.join(described)}")
    return "; ".join(lines)


def _is_lora_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def from_pretrained_vla(
    path: str | os.PathLike,
    config: VLAConfigMixin | None = None,
    **kwargs: Any,
) -> VLAMixin:
    """Load a VLA from a stock backbone dir (needs ``config``), a VLA checkpoint, or a LoRA checkpoint.

    The class follows the config (``qwen2_vla``, ``qwen2_5_vla`` or ``qwen3_vla``). A LoRA checkpoint
    (``adapter_config.json``) is loaded onto its base model and merged, so stage 3 and evaluation get a
    plain model either way.
    """
    from transformers import AutoConfig

    if _is_lora_checkpoint(path):
        from peft import PeftModel

        adapter = json.loads((Path(path) / "adapter_config.json").read_text())
        base_path = adapter.get("base_model_name_or_path")
        if base_path and not Path(base_path).is_absolute():
            base_path = str(Path(path) / base_path)  # the trainer writes it relative to the checkpoint
        if not base_path or not Path(base_path).exists():
            raise FileNotFoundError(
                f"{path}/adapter_config.json: base_model_name_or_path={base_path!r} does not exist; "
                "load the merged export of the LoRA run instead"
            )
        if config is None:
            config = AutoConfig.from_pretrained(path, cache_dir=kwargs.get("cache_dir"))
        base = vla_model_class(config).from_pretrained(base_path, config=config, **kwargs)
        return PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    if config is None:
        config = AutoConfig.from_pretrained(path, cache_dir=kwargs.get("cache_dir"))
    return vla_model_class(config).from_pretrained(str(path), config=config, **kwargs)


def set_trainable(model: nn.Module, training_args: Any) -> None:
    """Apply the freezing flags (see the module docstring); LoRA weights always stay trainable."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    check_part_prefixes(base)
    head_via_lora = bool(training_args.lora_enable) and "di_head" in training_args.lora_modules
    for name, param in base.named_parameters():
        if "original_module" in name:  # PEFT's frozen copy of a fully trained module
            trainable = False
        elif "lora_" in name or "modules_to_save" in name:
            trainable = True
        elif name.startswith(VISION_PREFIX):
            trainable = not training_args.freeze_vision_tower
        elif name.startswith(HEAD_PREFIX):
            trainable = not head_via_lora
        elif name.startswith(FUSION_PREFIX):
            trainable = True
        else:
            trainable = not training_args.freeze_backbone
        param.requires_grad_(trainable)


def load_model(
    config: dict[str, Any],
    qwen2_vla_config: VLAConfigMixin,
    rank0_print: Callable[..., None] = print,
    tokenizer: Any = None,
) -> tuple[nn.Module, Any]:
    """Load the model a stage trains (the reference's ``ml_utils.load_model``).

    Args:
        config: ``all_config`` with ``model_args``, ``data_args``, ``training_args``, ``action_head_args``.
        qwen2_vla_config: the VLA config of any backbone (from ``parse_param``).
        tokenizer: unused here; kept for the reference's signature.

    Returns:
        ``(model, data_args)``; the model is a ``PeftModel`` when LoRA is on.
    """
    model_args, data_args, training_args = config["model_args"], config["data_args"], config["training_args"]
    compute_dtype = compute_dtype_of(training_args)
    # Never the checkpoint's own dtype ("auto"): a bf16 download would train bf16 weights with no fp32 master.
    load_kwargs: dict[str, Any] = {"cache_dir": training_args.cache_dir, "dtype": load_dtype_of(training_args)}
    if training_args.flash_attn:
        load_kwargs["attn_implementation"] = "flash_attention_2"
    quant = quantization_config(training_args, compute_dtype)
    if quant is not None:
        load_kwargs["quantization_config"] = quant

    if training_args.deepspeed:
        # ZeRO-3 partitions the weights while loading (deepspeed.zero.Init) and reads the world size from
        # DeepSpeed's process group. On GPUs accelerate creates it; on CPU it only sets up torch.distributed
        # (gloo), so wrap that group before loading, or each process would believe it is alone.
        import deepspeed

        _ = training_args.device  # sets up torch.distributed
        deepspeed.init_distributed()
    source = model_args.model_name_or_path
    rank0_print(f"load_model: {'stage 3 from ' if training_args.load_pretrain else ''}{source}")
    model = from_pretrained_vla(source, config=qwen2_vla_config, **load_kwargs)
    model.config.use_cache = False

    if model_args.load_pretrain_dit and not training_args.load_pretrain:
        from policy_heads import load_pretrained_dit

        report = load_pretrained_dit(model.policy_head, model_args.pretrain_dit_path)
        rank0_print(f"load_model: stage-1 DiT from {model_args.pretrain_dit_path}: {report}")

    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=training_args.gradient_checkpointing)

    if training_args.lora_enable:
        from peft import LoraConfig, get_peft_model

        modules = training_args.lora_modules
        targets = lora_target_modules(model, modules)
        if not targets:
            raise ValueError(f"lora_module={training_args.lora_module!r} matched no linear layer of the model")
        lora_config = LoraConfig(
            r=training_args.lora_r,
            lora_alpha=training_args.lora_alpha,
            lora_dropout=training_args.lora_dropout,
            bias=training_args.lora_bias,
            target_modules=targets,
            modules_to_save=_modules_to_save(model, modules),
            task_type=None,
        )
        model = get_peft_model(model, lora_config)
        rank0_print(f"load_model: LoRA r={training_args.lora_r} on {modules}: {len(targets)} linear layers")

    set_trainable(model, training_args)
    if not training_args.deepspeed:
        cast_parameters(model, torch.float32, trainable=True)
        cast_parameters(model, compute_dtype, trainable=False)
    rank0_print(f"load_model: dtypes: {dtype_report(model)}")
    if training_args.gradient_checkpointing:
        # Frozen embeddings would otherwise cut the graph for checkpointed layers.
        model.enable_input_require_grads()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    rank0_print(f"load_model: {trainable:,} of {total:,} parameters trainable")
    return model, data_args
