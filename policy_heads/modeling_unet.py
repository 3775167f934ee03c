"""1-D conditional UNet diffusion expert (the DiVLA variant): Chi-style residual conv blocks with FiLM conditioning.

Module and parameter names follow the reference's `ConditionalUnet1D` exactly (`norm_after_pool`, a one-layer
`combine`, `diffusion_step_encoder.{1,3}`, `down_modules.i.2.conv`, `up_modules.i.2.conv`, `final_conv.{0,1}`),
so its DiVLA head weights load with strict loading. Deliberate differences in behaviour, none touching the
parameters:

- `prediction_horizon` and `action_dim` come from the config, and the sequence is zero-padded to a multiple of
  the total down-sampling factor and cropped back, so any horizon (e.g. 50) works;
- the condition tokens are mean-pooled (the reference squeezed a single token);
- the timestep embedding is computed in float32 (the reference built it in bfloat16, whose spacing of 0.5 above
  64 blurs the phases of large timesteps) and the scheduler arithmetic stays float32 (see `scheduling`);
- the noise-prediction loss averages over real steps only (see `losses.masked_noise_mse`);
- the final conv block's GroupNorm uses `config.n_groups` (the reference hard-coded 8, its default).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .conditioning import concat_state, pool_condition
from .configuration_unet import UnetDiffusionPolicyConfig
from .diffusion_policy import DiffusionPolicyMixin, expand_timesteps
from .scheduling import build_ddim_scheduler


class SinusoidalPosEmb(nn.Module):
    """Chi's timestep embedding: `(B,)` -> `(B, dim)` float32, sines then cosines.

    Frequencies are `exp(-log(10000) * i / (dim / 2 - 1))` for `i < dim / 2` (the first is 1, the last 1e-4).
    This is the layout `diffusion_step_encoder.1` of reference checkpoints was trained on; it differs from the
    DiT embedding of ScaleDP (cosines first, `/ (dim / 2)`). No parameters: index 0 of `diffusion_step_encoder`.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        step = math.log(10000.0) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=timesteps.device, dtype=torch.float32) * -step)
        args = timesteps.float()[:, None] * freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class Downsample1d(nn.Module):
    """Stride-2 conv halving the length: `(B, C, T) -> (B, C, T / 2)` (T even). A wrapper for the `.conv` name."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1d(nn.Module):
    """Stride-2 transposed conv doubling the length: `(B, C, T) -> (B, C, 2T)`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish, length preserving: `(B, C_in, T) -> (B, C_out, T)`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks; the condition scales and shifts the features between them (FiLM); residual 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                Conv1dBlock(in_channels, out_channels, kernel_size, n_groups),
                Conv1dBlock(out_channels, out_channels, kernel_size, n_groups),
            ]
        )
        # The reference's third entry (an Unflatten) has no parameters; `forward` adds the length axis instead.
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.residual_conv = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """`x` `(B, C_in, T)`, `cond` `(B, cond_dim)` -> `(B, C_out, T)`."""
        out = self.blocks[0](x)
        # First half of the encoder's output scales, second half shifts (the reference's channel order).
        scale, shift = self.cond_encoder(cond).unsqueeze(-1).chunk(2, dim=1)
        out = self.blocks[1](scale * out + shift)
        return out + self.residual_conv(x)


class ConditionalUnet1D(DiffusionPolicyMixin, PreTrainedModel):
    """UNet diffusion expert over the time axis of the action chunk.

    `forward(actions=None, hidden_states, states=None, is_pad=None)` returns the masked noise-prediction loss when
    `actions` `(B, T, action_dim)` are given and DDIM-sampled chunks `(B, prediction_horizon, action_dim)`
    otherwise (see `DiffusionPolicyMixin.forward`).
    """

    config_class = UnetDiffusionPolicyConfig
    config: UnetDiffusionPolicyConfig
    base_model_prefix = "unet"
    main_input_name = "hidden_states"

    def __init__(self, config: UnetDiffusionPolicyConfig) -> None:
        super().__init__(config)
        dsed, kernel, groups = config.diffusion_step_embed_dim, config.kernel_size, config.n_groups
        # Condition: pooled VLM features, normalised, then mixed with the state by one linear layer.
        self.norm_after_pool = nn.LayerNorm(config.global_cond_dim)
        state_width = config.state_dim * (2 if config.state_mask_input else 1)  # + the state mask
        self.combine = nn.Linear(config.global_cond_dim + state_width, config.global_cond_dim)
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed),
            nn.Linear(dsed, dsed * 4),
            nn.Mish(),
            nn.Linear(dsed * 4, dsed),
        )
        cond_dim = dsed + config.global_cond_dim
        dims = [config.action_dim, *config.down_dims]
        levels = list(zip(dims[:-1], dims[1:], strict=True))

        self.down_modules = nn.ModuleList()
        for i, (dim_in, dim_out) in enumerate(levels):
            is_last = i == len(levels) - 1
            self.down_modules.append(
                nn.ModuleList(
                    [
                        ConditionalResidualBlock1D(dim_in, dim_out, cond_dim, kernel, groups),
                        ConditionalResidualBlock1D(dim_out, dim_out, cond_dim, kernel, groups),
                        Downsample1d(dim_out) if not is_last else nn.Identity(),
                    ]
                )
            )
        mid = config.down_dims[-1]
        self.mid_modules = nn.ModuleList(
            [ConditionalResidualBlock1D(mid, mid, cond_dim, kernel, groups) for _ in range(2)]
        )
        self.up_modules = nn.ModuleList()
        for dim_in, dim_out in reversed(levels[1:]):
            # Input: the upsampled features concatenated with the skip connection of the same resolution.
            self.up_modules.append(
                nn.ModuleList(
                    [
                        ConditionalResidualBlock1D(dim_out * 2, dim_in, cond_dim, kernel, groups),
                        ConditionalResidualBlock1D(dim_in, dim_in, cond_dim, kernel, groups),
                        Upsample1d(dim_in),
                    ]
                )
            )
        start = config.down_dims[0]
        self.final_conv = nn.Sequential(
            Conv1dBlock(start, start, kernel, groups),
            nn.Conv1d(start, config.action_dim, 1),
        )
        # Each stride-2 stage halves the length; pad the horizon so every halving is exact.
        self.length_multiple = 2 ** (len(levels) - 1)
        self.noise_scheduler = build_ddim_scheduler(config.num_train_timesteps, config.prediction_type)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's default layer initialisation (what Chi's UNet and the reference were trained from), through
        the guarded `transformers.initialization` functions so loaded weights are never overwritten."""
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def _condition(
        self,
        global_cond: torch.Tensor,
        states: torch.Tensor | None,
        dtype: torch.dtype,
        state_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`(B, N, C)` or `(B, C)` condition and `(B, state_dim)` state -> `(B, C)` mixed condition."""
        cond = self.norm_after_pool(pool_condition(global_cond).to(dtype))
        return self.combine(
            concat_state(cond, states, self.config.state_dim, state_mask, self.config.state_mask_input)
        )

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
            global_cond: `(B, N, global_cond_dim)` or `(B, global_cond_dim)` condition.
            states: `(B, state_dim)` robot state.
            state_mask: `(B, state_dim)` real state dimensions (read with `config.state_mask_input` only).

        Returns:
            `(B, T, action_dim)` predicted noise in the model dtype.
        """
        dtype = self.final_conv[-1].weight.dtype
        batch, steps, _ = x.shape
        cond = self._condition(global_cond, states, dtype, state_mask)
        t = expand_timesteps(t, batch, x.device)
        # The sinusoid stays float32 (bf16 cannot resolve its phases); the MLP runs in the model dtype.
        t_emb = self.diffusion_step_encoder[0](t).to(dtype)
        for layer in self.diffusion_step_encoder[1:]:
            t_emb = layer(t_emb)
        feature = torch.cat([t_emb, cond], dim=-1)

        h = x.to(dtype).transpose(1, 2)  # (B, A, T): convolve over time
        pad = (-steps) % self.length_multiple
        if pad:
            h = F.pad(h, (0, pad))
        skips = []
        for res1, res2, downsample in self.down_modules:
            h = res2(res1(h, feature), feature)
            skips.append(h)
            h = downsample(h)
        for res in self.mid_modules:
            h = res(h, feature)
        for res1, res2, upsample in self.up_modules:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(res2(res1(h, feature), feature))
        h = self.final_conv(h)
        return h[..., :steps].transpose(1, 2)


__all__ = ["ConditionalUnet1D"]
