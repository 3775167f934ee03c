"""Sinusoidal embedding of diffusion timesteps (the glide/DiT formulation: cosines first, then sines)."""

import math

import torch


def sinusoidal_timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Embed integer or fractional timesteps.

    Args:
        timesteps: `(B,)` timesteps.
        dim: embedding width (odd widths get one zero column).
        max_period: lowest frequency is `1 / max_period`.

    Returns:
        `(B, dim)` float32 embedding. Built in float32 whatever the model dtype: bf16 cannot resolve the phase of
        large timesteps.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, device=timesteps.device, dtype=torch.float32) / half
    args = timesteps.float()[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


__all__ = ["sinusoidal_timestep_embedding"]
