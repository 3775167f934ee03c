"""Output type of the diffusion experts."""

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class DiffusionPolicyOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): masked noise-prediction MSE; set when `actions` are
            given to `forward` (training).
        actions (`torch.FloatTensor` of shape `(B, prediction_horizon, action_dim)`, *optional*): sampled action
            chunks; set when `forward` is called without `actions` (inference).
    """

    loss: torch.FloatTensor | None = None
    actions: torch.FloatTensor | None = None


__all__ = ["DiffusionPolicyOutput"]
