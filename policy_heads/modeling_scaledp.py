"""ScaleDP: a DiT-style diffusion transformer with adaLN-Zero conditioning, used as DexVLA's diffusion expert.

Parameter names follow the reference implementation (`blocks.{i}.attn.qkv`, `blocks.{i}.adaLN_modulation.1`,
`combine.{0,2,4}`, `final_layer.linear`, ...) so that its released stage-1 checkpoints load unchanged.
"""

from functools import partial
from typing import Final

import torch
import torch.nn.functional as F
from timm.layers import Mlp, use_fused_attn
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from .conditioning import ConditionNorm, StateConditionMixer, pool_condition
from .configuration_scaledp import ScaleDPPolicyConfig
from .diffusion_policy import DiffusionPolicyMixin, expand_timesteps
from .scheduling import build_ddim_scheduler
from .timestep_embedding import sinusoidal_timestep_embedding


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: `x` `(B, T, C)` scaled and shifted per sample by `(B, C)` vectors."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class ZeroInitLinear(nn.Linear):
    """A linear layer initialised to exactly zero (adaLN-Zero): the residual branch or output it feeds starts at 0."""


class TimestepMLPLinear(nn.Linear):
    """A linear layer of the timestep MLP, initialised from N(0, 0.02) as in DiT."""


class ScaleDPAttention(nn.Module):
    """Multi-head self-attention over the action tokens, `(B, T, C) -> (B, T, C)`."""

    fused_attn: Final[bool]

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        # timm's global switch (TIMM_FUSED_ATTN / export mode) decides between SDPA and the explicit softmax.
        self.fused_attn = use_fused_attn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, dim = x.shape
        qkv = self.qkv(x).reshape(batch, steps, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, T, head_dim)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(batch, steps, dim))


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features followed by an MLP: `(B,) -> (B, hidden_size)`."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            TimestepMLPLinear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            TimestepMLPLinear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = sinusoidal_timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class ScaleDPBlock(GradientCheckpointingLayer):
    """Self-attention + MLP, each pre-normed, adaLN-modulated and gated by the condition `c` `(B, C)`."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = ScaleDPAttention(hidden_size, num_heads=num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(
            in_features=hidden_size,
            hidden_features=int(hidden_size * mlp_ratio),
            act_layer=partial(nn.GELU, approximate="tanh"),
            drop=0.0,
        )
        # Zero-initialised: every block starts as the identity.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), ZeroInitLinear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """`x` `(B, T, C)`, `c` `(B, C)` -> `(B, T, C)`."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class ScaleDPFinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear read-out to the action width (no gate)."""

    def __init__(self, hidden_size: int, output_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = ZeroInitLinear(hidden_size, output_dim, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), ZeroInitLinear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """`x` `(B, T, C)`, `c` `(B, C)` -> `(B, T, output_dim)`."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class ScaleDP(DiffusionPolicyMixin, PreTrainedModel):
    """ScaleDP diffusion expert.

    `forward(actions=None, hidden_states, states=None, is_pad=None)` returns the masked noise-prediction loss when
    `actions` `(B, T, action_dim)` are given and DDIM-sampled chunks `(B, prediction_horizon, action_dim)`
    otherwise (see `DiffusionPolicyMixin.forward`).
    """

    config_class = ScaleDPPolicyConfig
    config: ScaleDPPolicyConfig
    base_model_prefix = "scaledp"
    main_input_name = "hidden_states"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ScaleDPBlock"]

    def __init__(self, config: ScaleDPPolicyConfig) -> None:
        super().__init__(config)
        self.combine = StateConditionMixer(
            config.cond_dim, config.state_dim, config.combine_hidden_dim, config.state_mask_input
        )
        self.condition_norm = ConditionNorm(config.cond_dim) if config.condition_norm else None
        self.x_embedder = nn.Linear(config.action_dim, config.n_emb)
        self.t_embedder = TimestepEmbedder(config.n_emb)
        self.cond_obs_emb = nn.Linear(config.cond_dim, config.n_emb)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.prediction_horizon, config.n_emb))
        self.blocks = nn.ModuleList(
            [ScaleDPBlock(config.n_emb, config.num_heads, mlp_ratio=config.mlp_ratio) for _ in range(config.depth)]
        )
        self.final_layer = ScaleDPFinalLayer(config.n_emb, config.action_dim)
        self.noise_scheduler = build_ddim_scheduler(config.num_train_timesteps)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """DiT initialisation with adaLN-Zero, decided per leaf module.

        Called by `post_init` (also when this head is a submodule of a larger `PreTrainedModel`) and by
        `from_pretrained` for weights missing from a checkpoint. The rules live on the modules that own the
        parameters because transformers skips parameter-less containers of custom models; the
        `transformers.initialization` functions leave tensors that were already initialised or loaded untouched.
        """
        if isinstance(module, ZeroInitLinear):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, TimestepMLPLinear):
            init.normal_(module.weight, std=0.02)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, ConditionNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, ScaleDP):
            init.normal_(module.pos_embed, std=0.02)

    def model_forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | int,
        global_cond: torch.Tensor,
        states: torch.Tensor | None = None,
        state_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise.

        Args:
            x: `(B, T, action_dim)` noisy actions (any float dtype; cast to the model dtype).
            t: `(B,)`, `()` or int diffusion timestep(s).
            global_cond: `(B, N, cond_dim)` or `(B, cond_dim)` condition.
            states: `(B, state_dim)` robot state.
            state_mask: `(B, state_dim)` real state dimensions (read with `config.state_mask_input` only).

        Returns:
            `(B, T, action_dim)` predicted noise in the model dtype.
        """
        dtype = self.x_embedder.weight.dtype
        x = x.to(dtype)
        pooled = pool_condition(global_cond).to(dtype)
        if self.condition_norm is not None:
            pooled = self.condition_norm(pooled)
        cond = self.combine(pooled, None if states is None else states.to(dtype), state_mask)
        t = expand_timesteps(t, x.shape[0], x.device)
        # Timestep embedding added to the embedded observation: one adaLN condition vector per sample.
        c = self.t_embedder(t) + self.cond_obs_emb(cond)
        x = self.x_embedder(x) + self.pos_embed[:, : x.shape[1]]
        for block in self.blocks:
            x = block(x, c)
        return self.final_layer(x, c)


__all__ = ["ScaleDP", "ScaleDPBlock"]
