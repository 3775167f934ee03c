"""Exponential moving average of the trainable weights (``--using_ema True``), as a Trainer callback.

The shadow copy lives in float32 beside the model and is updated after every optimizer step. It is
saved as ``ema_weights.safetensors`` in each checkpoint (only the trainable tensors, under their
model names) and restored on resume, so a resumed run continues the same average.
"""

from __future__ import annotations

import os

import safetensors.torch
import torch
from torch import nn
from transformers import TrainerCallback

EMA_WEIGHTS_NAME = "ema_weights.safetensors"


class EMACallback(TrainerCallback):
    """``shadow = decay_t * shadow + (1 - decay_t) * param`` with the warm-up ``decay_t = min(decay, (1+t)/(10+t))``.

    Args:
        model: the (unwrapped) model whose ``requires_grad`` parameters are averaged.
        decay: the decay the warm-up approaches.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        self.model = model
        self.decay = decay
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {}

    def _trainable(self) -> dict[str, torch.Tensor]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.shadow:  # a resumed run has loaded its shadow already
            self.shadow = {name: p.detach().float().clone() for name, p in self._trainable().items()}
            self.num_updates = state.global_step

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, **kwargs):
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for name, param in self._trainable().items():
            self.shadow[name].lerp_(param.detach().float(), 1.0 - decay)
        self.num_updates += 1

    def save(self, output_dir: str | os.PathLike) -> None:
        tensors = {name: t.contiguous() for name, t in self.shadow.items()}
        safetensors.torch.save_file(
            tensors, os.path.join(output_dir, EMA_WEIGHTS_NAME), metadata={"num_updates": str(self.num_updates)}
        )

    def load(self, checkpoint_dir: str | os.PathLike) -> bool:
        """Restore the shadow from a checkpoint; False when the checkpoint has none."""
        path = os.path.join(checkpoint_dir, EMA_WEIGHTS_NAME)
        if not os.path.exists(path):
            return False
        with safetensors.safe_open(path, framework="pt") as f:
            self.num_updates = int((f.metadata() or {}).get("num_updates", 0))
            self.shadow = {name: f.get_tensor(name) for name in f.keys()}
        expected = set(self._trainable())
        if set(self.shadow) != expected:
            raise ValueError(
                f"{path}: EMA tensors do not match the trainable parameters "
                f"({len(set(self.shadow) ^ expected)} names differ); was the run started with other freeze flags?"
            )
        device = next(iter(self._trainable().values())).device
        self.shadow = {name: t.to(device) for name, t in self.shadow.items()}
        return True

    @torch.no_grad()
    def copy_to(self, model: nn.Module | None = None) -> None:
        """Write the averaged weights into ``model`` (default: the tracked one)."""
        params = dict((model or self.model).named_parameters())
        for name, value in self.shadow.items():
            params[name].copy_(value.to(params[name].dtype))
