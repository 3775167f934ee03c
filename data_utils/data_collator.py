"""Batching processed samples for the VLA (the reference's ``Qwen2VLADataCollatorForSupervisedDataset``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

IGNORE_INDEX = -100


def left_pad(sequences: Sequence[torch.Tensor], padding_value: int | float) -> torch.Tensor:
    """Stack 1-D tensors into ``(B, max_len)``, padding on the left (what batched generation needs)."""
    length = max(seq.shape[0] for seq in sequences)
    out = sequences[0].new_full((len(sequences), length), padding_value)
    for row, seq in enumerate(sequences):
        if seq.shape[0]:
            out[row, length - seq.shape[0] :] = seq
    return out


class Qwen2VLADataCollatorForSupervisedDataset:
    """Pads token features (left), concatenates image patches, stacks robot tensors.

    Output keys are the model's argument names: ``input_ids``, ``attention_mask``, ``labels``,
    ``mm_token_type_ids``, ``pixel_values``, ``image_grid_thw``, ``states``, ``actions``, ``is_pad`` and, for a
    model over several embodiments, ``state_mask``/``action_mask`` ``(B, D)`` bool (samples may then carry
    different numbers of images: their patches are concatenated all the same).

    Args:
        multimodal_processor: unused beyond bookkeeping; kept for the reference's signature.
        computed_type: dtype for ``pixel_values`` and ``states`` (``None`` keeps float32); target
            actions stay float32.
        tokenizer: provides ``pad_token_id``.
    """

    def __init__(
        self,
        multimodal_processor: Any = None,
        computed_type: torch.dtype | None = None,
        tokenizer: Any = None,
    ) -> None:
        if tokenizer is None or tokenizer.pad_token_id is None:
            raise ValueError("the collator needs a tokenizer with a pad_token_id")
        self.multimodal_processor = multimodal_processor
        self.computed_type = computed_type
        self.pad_token_id = int(tokenizer.pad_token_id)

    def __call__(self, instances: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {
            "input_ids": left_pad([x["input_ids"] for x in instances], self.pad_token_id),
            "attention_mask": left_pad([x["attention_mask"] for x in instances], 0),
        }
        if "labels" in instances[0]:
            batch["labels"] = left_pad([x["labels"] for x in instances], IGNORE_INDEX)
        if "mm_token_type_ids" in instances[0]:
            batch["mm_token_type_ids"] = left_pad([x["mm_token_type_ids"] for x in instances], 0)
        if "pixel_values" in instances[0]:
            # Qwen2-VL flattens every image into patches: a batch is all patches, one after another.
            batch["pixel_values"] = self._cast(torch.cat([x["pixel_values"] for x in instances], dim=0))
            batch["image_grid_thw"] = torch.cat([x["image_grid_thw"] for x in instances], dim=0)
        pairs = (("state", "states"), ("action", "actions"), ("is_pad", "is_pad"), ("state_mask", "state_mask"),
                 ("action_mask", "action_mask"))
        for source, target in pairs:
            if source in instances[0]:
                stacked = torch.stack([torch.as_tensor(x[source]) for x in instances])
                # Targets stay float32: the head computes its loss in float32, bf16 would quantise them.
                batch[target] = self._cast(stacked) if source == "state" else stacked
        return batch

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.computed_type is not None and tensor.is_floating_point():
            return tensor.to(self.computed_type)
        return tensor
