"""Fusion of the VLM's hidden states into the policy head's condition (seed notes: "Fusion 模块", FiLM).

The prompt tokens (instruction + images) and the answer tokens (reasoning + "Next action:") are
pooled separately, projected, and the answer modulates the prompt through FiLM; the mean prompt
state is added back as a residual. Result: one condition vector per sample, ``(B, 1, hidden)``.

Prompt and answer are told apart by masks, not by counting a pad token id, so left and right
padding work alike and no tokenizer's id is baked in.
"""

from __future__ import annotations

import torch
from torch import nn


def masked_mean(hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens where ``mask`` is true: ``(B, L, H), (B, L) -> (B, H)``; zeros where none is."""
    weights = mask.to(hidden_states.dtype).unsqueeze(-1)
    total = (hidden_states * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp_min(1.0)
    return total / count


class ActionProjector(nn.Module):
    """Pool a token span, then a 2-layer MLP (the reference's ``ActionProjector``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlps = nn.ModuleList([nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim), nn.Dropout(0.0)])

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, in_dim)`` and token mask ``(B, L)`` -> ``(B, out_dim)``."""
        x = masked_mean(hidden_states, mask)
        for layer in self.mlps:
            x = layer(x)
        return x


class ZeroInitLinear(nn.Linear):
    """A linear layer that starts at zero; its own type lets model ``_init_weights`` hooks keep it so."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class FiLM(nn.Module):
    """Feature-wise linear modulation ``x * (1 + scale(c)) + shift(c)``; zero-initialised to the identity."""

    def __init__(self, feature_dim: int, condition_dim: int) -> None:
        super().__init__()
        self.scale_fc = ZeroInitLinear(condition_dim, feature_dim)
        self.shift_fc = ZeroInitLinear(condition_dim, feature_dim)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return x * (1 + self.scale_fc(condition)) + self.shift_fc(condition)


def split_prompt_answer(
    attention_mask: torch.Tensor | None, labels: torch.Tensor, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt and answer token masks ``(B, L)`` from the labels and the attention mask.

    Answer = supervised tokens (label != ignore_index); prompt = attended tokens that are not
    supervised. Padding is excluded from both wherever it sits.
    """
    attended = torch.ones_like(labels, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    answer = (labels != ignore_index) & attended
    prompt = attended & ~answer
    return prompt, answer


class ReasoningFusion(nn.Module):
    """``input_action_proj`` + ``reasoning_action_proj`` + ``reasoning_film``: hidden states -> ``(B, 1, H)``."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.input_action_proj = ActionProjector(hidden_size, hidden_size)
        self.reasoning_action_proj = ActionProjector(hidden_size, hidden_size)
        self.reasoning_film = FiLM(feature_dim=hidden_size, condition_dim=hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, prompt_mask: torch.Tensor, answer_mask: torch.Tensor
    ) -> torch.Tensor:
        """``hidden_states (B, L, H)``, masks ``(B, L)`` -> condition ``(B, 1, H)``."""
        input_embeddings = self.input_action_proj(hidden_states, prompt_mask)
        reasoning_embeddings = self.reasoning_action_proj(hidden_states, answer_mask)
        identity = masked_mean(hidden_states, prompt_mask)
        fused = self.reasoning_film(input_embeddings, reasoning_embeddings)
        return (fused + identity).unsqueeze(1)
