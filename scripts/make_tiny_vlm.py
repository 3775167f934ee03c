#!/usr/bin/env python
"""Build a tiny, randomly initialised Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoint for offline tests.

Usage::

    python scripts/make_tiny_vlm.py OUT_DIR [--backbone qwen2_vl|qwen2_5_vl|qwen3_vl] [--seed N]

Each output directory is a *stock* checkpoint of that backbone (transformers' ``qwen2_vl``, ``qwen2_5_vl`` or
``qwen3_vl`` model type, its own processor class and chat template), loadable offline with the Auto classes, so
code written against it accepts the real download unchanged. ``qwen2_vl`` is :mod:`scripts.make_tiny_qwen2_vl`'s
fixture itself; the others share its tokenizer (the same BPE, with each backbone's extra added tokens at the ids
the real tokenizers give them), its generation settings and its saving, and differ where the real models do:

* Qwen2.5-VL: window attention in the vision tower (``window_size``, full attention on ``fullatt_block_indexes``),
  a gated-MLP vision block with ``out_hidden_size`` to the LM, the same 14-pixel patches and chat template.
* Qwen3-VL: 16-pixel patches (images rounded to multiples of 32), learned vision position embeddings,
  deepstack mergers feeding the first LM layers, interleaved M-RoPE with an explicit ``head_dim``,
  ``Qwen3VLProcessor`` / ``Qwen3VLVideoProcessor``, and a chat template without a default system turn.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `scripts.` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.make_tiny_qwen2_vl import (  # noqa: E402
    DEFAULT_BPE_VOCAB_SIZE,
    MERGE_SIZE,
    SYSTEM_PROMPT,
    TEMPORAL_PATCH_SIZE,
    build_chat_template,
    build_tiny_qwen2_vl,
    build_tokenizer,
    save_tiny_checkpoint,
)

BACKBONES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

# Added (non-special) tokens after Qwen2-VL's 14 special ones, in the real tokenizers' order (ids 151657 ..).
QWEN2_5_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
QWEN3_ADDED_TOKENS = (*QWEN2_5_ADDED_TOKENS, "<tool_response>", "</tool_response>", "<think>", "</think>")

# Qwen2.5-VL: 14-pixel patches as Qwen2-VL, so the same small pixel budget (56x56 -> 4 image tokens).
QWEN2_5_PATCH_SIZE = 14
QWEN2_5_MIN_PIXELS = 56 * 56
QWEN2_5_MAX_PIXELS = 112 * 112
# Qwen3-VL: 16-pixel patches, sides rounded to multiples of 32: a 56x56 camera image becomes 64x64 -> 4 tokens.
QWEN3_PATCH_SIZE = 16
QWEN3_MIN_PIXELS = 64 * 64
QWEN3_MAX_PIXELS = 128 * 128
# Qwen3-VL's image/video normalisation (its preprocessor_config.json), unlike Qwen2-VL's CLIP statistics.
QWEN3_IMAGE_MEAN = (0.5, 0.5, 0.5)
QWEN3_IMAGE_STD = (0.5, 0.5, 0.5)

# The tiny language model shared by the new backbones: as make_tiny_qwen2_vl's (64 wide, 2 layers, 4/2 heads).
HIDDEN_SIZE = 64
INTERMEDIATE_SIZE = 128
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
VISION_WIDTH = 32


def _token_ids(tokenizer: Any) -> dict[str, int]:
    def tid(token: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(token))

    return {
        "image_token_id": tid("<|image_pad|>"),
        "video_token_id": tid("<|video_pad|>"),
        "vision_start_token_id": tid("<|vision_start|>"),
        "vision_end_token_id": tid("<|vision_end|>"),
    }


def _text_config(tokenizer: Any, tie_word_embeddings: bool, rope_parameters: dict[str, Any]) -> dict[str, Any]:
    """The tiny LM: bos = pad = ``<|endoftext|>``, eos = ``<|im_end|>`` as in the real Qwen-VL configs."""
    endoftext = int(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": INTERMEDIATE_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "max_position_embeddings": 4096,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_parameters": rope_parameters,
        "bos_token_id": endoftext,
        "eos_token_id": int(tokenizer.convert_tokens_to_ids("<|im_end|>")),
        "pad_token_id": endoftext,
        "tie_word_embeddings": tie_word_embeddings,
    }


def build_qwen2_5_vl_parts(tokenizer_builder: Callable[..., Any] = build_tokenizer, tie_word_embeddings: bool = True,
                           dtype: str = "float32") -> tuple[Any, Any, Any, type]:
    """``(tokenizer, processor, config, model_class)`` of the tiny Qwen2.5-VL."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    template = build_chat_template(SYSTEM_PROMPT)  # Qwen2.5-VL-Instruct renders as Qwen2-VL-Instruct
    tokenizer = tokenizer_builder(DEFAULT_BPE_VOCAB_SIZE, added_tokens=QWEN2_5_ADDED_TOKENS, chat_template=template)
    vision_kwargs = {
        "min_pixels": QWEN2_5_MIN_PIXELS,
        "max_pixels": QWEN2_5_MAX_PIXELS,
        "patch_size": QWEN2_5_PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "merge_size": MERGE_SIZE,
    }
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**vision_kwargs),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**vision_kwargs),
        chat_template=template,
    )
    head_dim = HIDDEN_SIZE // NUM_HEADS
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}  # 2 * 8 = head_dim
    assert 2 * sum(rope["mrope_section"]) == head_dim
    text_config = {
        **_text_config(tokenizer, tie_word_embeddings, rope),
        "use_sliding_window": False,
        "max_window_layers": NUM_LAYERS,
    }
    vision_config = {
        "depth": 2,
        "hidden_size": VISION_WIDTH,
        "intermediate_size": 2 * VISION_WIDTH,
        "num_heads": 2,
        "hidden_act": "silu",
        "out_hidden_size": HIDDEN_SIZE,  # the merger's output replaces <|image_pad|> embeddings
        "patch_size": QWEN2_5_PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        # A window of 56 pixels = 2x2 merged tokens: a 112x112 image has 4 windows, so windowed and full
        # attention (block 1, as the real model's every 8th block) both run.
        "window_size": 56,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
    }
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        tie_word_embeddings=tie_word_embeddings,
        dtype=dtype,
        **_token_ids(tokenizer),
    )
    return tokenizer, processor, config, Qwen2_5_VLForConditionalGeneration


def build_qwen3_vl_parts(tokenizer_builder: Callable[..., Any] = build_tokenizer, tie_word_embeddings: bool = True,
                         dtype: str = "float32") -> tuple[Any, Any, Any, type]:
    """``(tokenizer, processor, config, model_class)`` of the tiny Qwen3-VL."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    template = build_chat_template(None)  # Qwen3-VL-Instruct adds no default system turn
    tokenizer = tokenizer_builder(DEFAULT_BPE_VOCAB_SIZE, added_tokens=QWEN3_ADDED_TOKENS, chat_template=template)
    normalise = {"image_mean": list(QWEN3_IMAGE_MEAN), "image_std": list(QWEN3_IMAGE_STD)}
    patches = {"patch_size": QWEN3_PATCH_SIZE, "temporal_patch_size": TEMPORAL_PATCH_SIZE, "merge_size": MERGE_SIZE}
    size = {"shortest_edge": QWEN3_MIN_PIXELS, "longest_edge": QWEN3_MAX_PIXELS}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, **patches, **normalise),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(size=size, **patches, **normalise),
        chat_template=template,
    )
    head_dim = HIDDEN_SIZE // NUM_HEADS
    # Interleaved M-RoPE: of the head_dim/2 = 8 frequencies, H and W take every third from index 1 and 2
    # (mrope_section[1:] of them each), T the rest -- the real [24, 20, 20] of 64, scaled down.
    rope = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
    assert 2 * sum(rope["mrope_section"]) == head_dim
    text_config = {**_text_config(tokenizer, tie_word_embeddings, rope), "head_dim": head_dim}
    vision_config = {
        "depth": 2,
        "hidden_size": VISION_WIDTH,
        "intermediate_size": 2 * VISION_WIDTH,
        "num_heads": 2,
        "hidden_act": "gelu_pytorch_tanh",
        "out_hidden_size": HIDDEN_SIZE,
        "patch_size": QWEN3_PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        # An 8x8 learned position grid (the real one is 48x48), resampled to each image's patch grid.
        "num_position_embeddings": 64,
        # Vision block 0's features are added to LM layer 0 through the first deepstack merger.
        "deepstack_visual_indexes": [0],
    }
    config = Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        tie_word_embeddings=tie_word_embeddings,
        dtype=dtype,
        **_token_ids(tokenizer),
    )
    return tokenizer, processor, config, Qwen3VLForConditionalGeneration


_PARTS = {"qwen2_5_vl": build_qwen2_5_vl_parts, "qwen3_vl": build_qwen3_vl_parts}


def build_tiny_vlm(out_dir: str | Path, backbone: str = "qwen2_vl", seed: int = 0, dtype: str = "float32") -> Path:
    """Write a tiny random stock checkpoint of ``backbone`` (one of :data:`BACKBONES`) to ``out_dir``.

    Weights depend only on ``seed``; ``qwen2_vl`` is exactly :func:`scripts.make_tiny_qwen2_vl.build_tiny_qwen2_vl`.
    """
    if backbone == "qwen2_vl":
        return build_tiny_qwen2_vl(out_dir, seed, dtype=dtype)
    if backbone not in _PARTS:
        raise ValueError(f"backbone={backbone!r} is not one of {list(BACKBONES)}")
    tokenizer, processor, config, model_class = _PARTS[backbone](dtype=dtype)
    return save_tiny_checkpoint(out_dir, model_class, config, tokenizer, processor, seed, dtype)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``make_tiny_vlm.py OUT_DIR [--backbone B] [--seed N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", type=Path, help="directory to write the checkpoint into (created if missing)")
    parser.add_argument("--backbone", choices=BACKBONES, default="qwen2_vl", help="stock model type to build")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights (default: 0)")
    args = parser.parse_args(argv)
    print(build_tiny_vlm(args.out_dir, args.backbone, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
