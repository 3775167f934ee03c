"""``Qwen2VLAProcess``: a dataset ``sample`` -> the features the VLA trains on (seed: "Qwen2VLAProcess").

The prompt is one user message holding one image per camera and then the instruction, rendered
with the processor's own chat template; the answer ``reasoning + "Next action:" + <|im_end|>`` is
appended with labels on the answer only. Evaluation builds its prompts with the same
``prompt_inputs`` so the two can never drift apart.

A model trained over several embodiments is told which robot it controls in the prompt: the instruction
becomes ``"Robot: <embodiment>. <instruction>"`` (:func:`embodiment_instruction`). Text rather than a learned
embedding: the VLM already conditions everything (reasoning included) on the prompt, the name needs no new
parameters or checkpoint fields, and the images already differ in number and viewpoint per embodiment, so the
name only has to disambiguate, which a few tokens do. A single-embodiment model's prompt is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, ProcessorMixin

from data_utils.image_utils import parse_image_size, to_pil_images

IGNORE_INDEX = -100
ACTION_PROMPT = "Next action:"
END_OF_TURN = "<|im_end|>"


def build_messages(num_images: int, instruction: str) -> list[dict[str, Any]]:
    """One user turn: the camera images, then the instruction (the reference's ``datastruct_droid2llava``)."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": instruction})
    return [{"role": "user", "content": content}]


def embodiment_instruction(instruction: str, embodiment: str | None) -> str:
    """The instruction the VLM sees: prefixed with the robot's name for a multi-embodiment model (``None``: as is)."""
    return instruction if embodiment is None else f"Robot: {embodiment}. {instruction}"


def answer_text(reasoning: str | None, use_reasoning: bool) -> str:
    """``reasoning + "Next action:" + <|im_end|>``, or just ``<|im_end|>`` without reasoning.

    ``reasoning=None`` (an episode without a reasoning annotation) gets the no-reasoning answer even
    under ``use_reasoning``: no language loss is spent on reasoning it does not have. Per sample, so a
    batch may mix annotated and unannotated episodes.
    """
    return f"{reasoning}{ACTION_PROMPT}{END_OF_TURN}" if use_reasoning and reasoning is not None else END_OF_TURN


class Qwen2VLAProcess:
    """Turns ``EpisodicDataset`` samples into model features.

    Args:
        tokenizer: the Qwen2-VL tokenizer.
        multimodal_processor: the Qwen2-VL ``AutoProcessor`` (image processor + chat template).
        data_args: anything with ``image_size_stable`` and ``image_size_wrist`` (strings such as
            ``"(320,240)"`` or ``(width, height)`` tuples).
        camera_names: camera order of ``sample["image"]``.
        model_max_length: longest token sequence (prompt + answer) allowed; longer samples are an
            error rather than a silent truncation of the answer (``None``: no limit).
        embodiment: the robot's name, put into every prompt (:func:`embodiment_instruction`) when the model is
            trained over several embodiments; ``None`` for a single-embodiment model.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        multimodal_processor: ProcessorMixin,
        data_args: Any,
        camera_names: Sequence[str],
        model_max_length: int | None = None,
        embodiment: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.embodiment = embodiment
        self.multimodal_processor = multimodal_processor
        self.data_args = data_args
        self.camera_names = list(camera_names)
        self.model_max_length = model_max_length
        self.image_size_stable = parse_image_size(data_args.image_size_stable)
        self.image_size_wrist = parse_image_size(data_args.image_size_wrist)
        if tokenizer.convert_tokens_to_ids(END_OF_TURN) in (None, tokenizer.unk_token_id):
            raise ValueError(f"tokenizer has no {END_OF_TURN!r} token: is this a Qwen2-VL tokenizer?")

    def prompt_inputs(self, images: torch.Tensor | np.ndarray, instruction: str) -> dict[str, torch.Tensor]:
        """Prompt features for one observation: ``images (num_cams, 3, H, W)`` or ``(num_cams, H, W, 3)`` uint8.

        Returns ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` of shape ``(L,)``,
        ``pixel_values (P, D)`` and ``image_grid_thw (num_cams, 3)``.
        """
        pil_images = to_pil_images(images, self.camera_names, self.image_size_stable, self.image_size_wrist)
        messages = build_messages(len(pil_images), embodiment_instruction(instruction, self.embodiment))
        text = self.multimodal_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.multimodal_processor(text=[text], images=pil_images, padding=True, return_tensors="pt")
        features = {key: value for key, value in inputs.items()}
        for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            if key in features:
                features[key] = features[key][0]
        return features

    def forward_process(self, sample: dict[str, Any], use_reasoning: bool = True) -> dict[str, Any]:
        """``sample`` (see ``EpisodicDataset``) -> features with the answer appended and ``labels``."""
        features = self.prompt_inputs(sample["image"], sample["raw_lang"])
        answer = self.tokenizer(answer_text(sample.get("reasoning"), use_reasoning), add_special_tokens=False)
        answer_ids = torch.as_tensor(answer["input_ids"], dtype=features["input_ids"].dtype)
        prompt_len = features["input_ids"].shape[0]
        features["input_ids"] = torch.cat([features["input_ids"], answer_ids])
        features["attention_mask"] = torch.cat(
            [features["attention_mask"], torch.ones_like(answer_ids, dtype=features["attention_mask"].dtype)]
        )
        if "mm_token_type_ids" in features:
            mm = features["mm_token_type_ids"]
            features["mm_token_type_ids"] = torch.cat([mm, torch.zeros_like(answer_ids, dtype=mm.dtype)])
        features["labels"] = torch.cat([torch.full((prompt_len,), IGNORE_INDEX, dtype=answer_ids.dtype), answer_ids])
        length = features["input_ids"].shape[0]
        if self.model_max_length is not None and length > self.model_max_length:
            raise ValueError(
                f"a sample has {length} tokens ({prompt_len} prompt + {len(answer_ids)} answer) but "
                f"model_max_length={self.model_max_length}: raise --model_max_length or shrink the images"
            )
        for key in ("state", "action", "is_pad", "state_mask", "action_mask"):
            if key in sample:
                features[key] = sample[key]
        return features
