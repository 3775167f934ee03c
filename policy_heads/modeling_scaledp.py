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

from .conditioning import ConditionNorm, ConditionTokenNorm, StateConditionMixer, pool_condition
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


class ScaleDPCrossAttention(nn.Module):
    """Action tokens `(B, T, C)` attend to the VLM's condition tokens `(B, L, C)` (already projected to `C`)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = nn.Linear(dim, dim * 2, bias=True)
        # Zero-initialised like the adaLN gates: a block with cross-attention starts as the block without it.
        self.proj = ZeroInitLinear(dim, dim)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """`x` `(B, T, C)`, `tokens` `(B, L, C)`, `token_mask` `(B, L)` bool (True: attend) -> `(B, T, C)`."""
        batch, steps, dim = x.shape
        q = self.q(x).reshape(batch, steps, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv(tokens).reshape(batch, tokens.shape[1], 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)  # each (B, heads, L, head_dim)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=token_mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(batch, steps, dim))


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
    """Self-attention + MLP, each pre-normed, adaLN-modulated and gated by the condition `c` `(B, C)`; with
    `cross_attention`, a pre-normed cross-attention to the condition tokens between the two (not in the reference)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, cross_attention: bool = False) -> None:
        super().__init__()
        if cross_attention:
            self.norm_cross = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.cross_attn = ScaleDPCrossAttention(hidden_size, num_heads)
        else:
            self.cross_attn = None
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

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        tokens: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`x` `(B, T, C)`, `c` `(B, C)`, `tokens` `(B, L, C)` and `token_mask` `(B, L)` (cross-attention only)
        -> `(B, T, C)`."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), tokens, token_mask)
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


class ConditionTokenEmbedder(nn.Module):
    """The VLM's token states `(B, L, cond_dim)` -> keys/values `(B, L, n_emb)` for the blocks' cross-attention.

    Each token gets a learnt embedding of its place among the sample's attended tokens (counted from its first
    one, so left and right padding give the same), because the hidden states do not carry where in the image a
    token sits: rotary positions act inside attention only.
    """

    def __init__(self, cond_dim: int, n_emb: int, max_tokens: int, standardize: bool = False) -> None:
        super().__init__()
        self.standardize = ConditionTokenNorm(max_tokens, cond_dim) if standardize else None
        self.norm = nn.LayerNorm(cond_dim, eps=1e-6)
        self.proj = nn.Linear(cond_dim, n_emb)
        self.position = nn.Parameter(torch.zeros(max_tokens, n_emb))

    def forward(
        self, tokens: torch.Tensor | None, token_mask: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`tokens` `(B, L, cond_dim)`, `token_mask` `(B, L)` (True: attend; every row needs one; None: all) ->
        embedded tokens `(B, L, n_emb)` and the mask as bool."""
        cond_dim = self.norm.normalized_shape[0]
        if tokens is None:
            raise ValueError("this head has cross_attention=True: condition_tokens (B, L, cond_dim) are required")
        if tokens.ndim != 3 or tokens.shape[0] != batch or tokens.shape[-1] != cond_dim:
            raise ValueError(f"condition_tokens have shape {tuple(tokens.shape)}, expected ({batch}, L, {cond_dim})")
        # Checked on the shape, not on the mask's count, so the check never waits for the device.
        if tokens.shape[1] > self.position.shape[0]:
            raise ValueError(
                f"{tokens.shape[1]} condition tokens, but the head holds positions for max_condition_tokens="
                f"{self.position.shape[0]}"
            )
        if token_mask is None:
            token_mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        elif tuple(token_mask.shape) != tuple(tokens.shape[:2]):
            raise ValueError(f"condition_token_mask has shape {tuple(token_mask.shape)}, expected {tuple(tokens.shape[:2])}")
        token_mask = token_mask.to(device=tokens.device, dtype=torch.bool)
        index = (token_mask.long().cumsum(dim=1) - 1).clamp_min(0)
        dtype = self.proj.weight.dtype
        if self.standardize is not None:
            tokens = self.standardize(tokens, token_mask, index)
        embedded = self.proj(self.norm(tokens.to(dtype))) + self.position[index]
        return embedded, token_mask


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
    # The condition tokens' statistics stay float32 in a bf16/fp16 model (also under ZeRO-3's init, which casts at
    # construction): see ConditionTokenNorm.
    _keep_in_fp32_modules_strict = ["token_embedder.standardize"]

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
        if config.cross_attention:
            self.token_embedder = ConditionTokenEmbedder(
                config.cond_dim, config.n_emb, config.max_condition_tokens, config.condition_token_norm
            )
        else:
            self.token_embedder = None
        self.blocks = nn.ModuleList(
            [
                ScaleDPBlock(config.n_emb, config.num_heads, config.mlp_ratio, config.cross_attention)
                for _ in range(config.depth)
            ]
        )
        self.final_layer = ScaleDPFinalLayer(config.n_emb, config.action_dim)
        self.noise_scheduler = build_ddim_scheduler(config.num_train_timesteps, config.prediction_type)
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
        elif isinstance(module, ConditionTokenNorm):
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.batches_tracked)
        elif isinstance(module, ConditionTokenEmbedder):
            init.normal_(module.position, std=0.02)
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def model_forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | int,
        global_cond: torch.Tensor,
        states: torch.Tensor | None = None,
        state_mask: torch.Tensor | None = None,
        condition_tokens: torch.Tensor | None = None,
        condition_token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise.

        Args:
            x: `(B, T, action_dim)` noisy actions (any float dtype; cast to the model dtype).
            t: `(B,)`, `()` or int diffusion timestep(s).
            global_cond: `(B, N, cond_dim)` or `(B, cond_dim)` condition.
            states: `(B, state_dim)` robot state.
            state_mask: `(B, state_dim)` real state dimensions (read with `config.state_mask_input` only).
            condition_tokens: `(B, L, cond_dim)` the VLM's token states (`config.condition_tokens_from`: its last
                hidden states or its language model's input), attended to by every block (`config.cross_attention`);
                condition_token_mask: `(B, L)` True on the tokens to attend to.

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
        tokens = token_mask = None
        if self.token_embedder is not None:
            tokens, token_mask = self.token_embedder(condition_tokens, condition_token_mask, x.shape[0])
        elif condition_tokens is not None:
            raise ValueError("condition_tokens were given but the head was built with cross_attention=False")
        for block in self.blocks:
            x = block(x, c, tokens, token_mask)
        return self.final_layer(x, c)


__all__ = ["ScaleDP", "ScaleDPBlock"]
