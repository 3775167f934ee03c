"""Global condition of the diffusion experts: the VLM's (fused) hidden states mixed with the robot state."""

from collections.abc import Callable

import torch
from torch import nn


def pool_condition(hidden_states: torch.Tensor) -> torch.Tensor:
    """Reduce the condition to one vector per sample.

    Args:
        hidden_states: `(B, N, C)` tokens (mean-pooled over N; with FiLM fusion N is 1) or `(B, C)`.

    Returns:
        `(B, C)`.
    """
    if hidden_states.ndim == 2:
        return hidden_states
    if hidden_states.ndim != 3:
        raise ValueError(f"hidden_states must be (B, N, C) or (B, C), got shape {tuple(hidden_states.shape)}")
    return hidden_states.mean(dim=1)


def concat_state(
    cond: torch.Tensor,
    states: torch.Tensor | None,
    state_dim: int,
    state_mask: torch.Tensor | None = None,
    with_mask: bool = False,
) -> torch.Tensor:
    """`cond` `(B, C)` and `states` `(B, state_dim)` -> `(B, C + state_dim)`; checks the state's presence and width.

    `with_mask` (a head built for several embodiments): `(B, C + 2 state_dim)`, the state followed by
    `state_mask` `(B, state_dim)` (1 on the embodiment's real dimensions; None: all real), so the projection can
    tell a padded zero from a measured one. `state_dim == 0`: no state is expected, `cond` is returned as is.
    """
    if state_dim > 0:
        if states is None:
            raise ValueError(f"states of width state_dim={state_dim} are required, got None")
        if states.shape[-1] != state_dim:
            raise ValueError(f"states have width {states.shape[-1]}, expected state_dim={state_dim}")
        parts = [cond, states.to(cond.dtype)]
        if with_mask:
            if state_mask is None:
                state_mask = torch.ones_like(parts[1])
            elif tuple(state_mask.shape) != tuple(states.shape):
                raise ValueError(f"state_mask has shape {tuple(state_mask.shape)}, expected {tuple(states.shape)}")
            parts.append(state_mask.to(device=cond.device, dtype=cond.dtype))
        return torch.cat(parts, dim=-1)
    if states is not None and states.numel() > 0:
        raise ValueError("states were given but the head was configured with state_dim=0")
    return cond


class StateConditionMixer(nn.Sequential):
    """The reference's `combine` MLP: `[condition, state] -> condition`, three linear layers with ReLU.

    A `Sequential` so that parameter names (`combine.0`, `combine.2`, `combine.4`) match the reference checkpoints.
    """

    def __init__(self, cond_dim: int, state_dim: int, hidden_dim: int, state_mask_input: bool = False) -> None:
        super().__init__(
            nn.Linear(cond_dim + state_dim * (2 if state_mask_input else 1), hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, cond_dim),
        )
        self.state_dim = state_dim
        self.state_mask_input = state_mask_input

    def forward(
        self, cond: torch.Tensor, states: torch.Tensor | None = None, state_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`cond` `(B, C)`, `states` `(B, state_dim)` (None only when `state_dim == 0`), `state_mask` `(B, state_dim)`
        (used with `state_mask_input`) -> `(B, C)`."""
        return super().forward(concat_state(cond, states, self.state_dim, state_mask, self.state_mask_input))


class ConditionNorm(nn.BatchNorm1d):
    """Per-feature standardisation of the pooled condition `(B, C)`: batch statistics in training (running ones
    for a one-sample batch, whose variance is undefined), running statistics at inference."""

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        if self.training and cond.shape[0] < 2:
            return nn.functional.batch_norm(
                cond, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(cond)


class ConditionTokenNorm(nn.Module):
    """Standardisation of the condition tokens `(B, L, C)` per place and feature (a batch norm per place).

    A token's place is its index among the sample's attended tokens, so each of the image's patches keeps its own
    statistics. The VLM's token states share a large constant part: where a small object sits changes its patch's
    state by a fraction of a percent, too little for the head to pick up, yet a linear read-out of the
    standardised states finds it. In training a place is standardised with the batch's statistics when at least
    two samples attend to it (as batch norm: they move with the VLM as it trains, where running averages would lag
    behind it), else with the running ones as they were before this batch; at inference always with the running
    ones, so a sample's tokens do not depend on its batch. The running statistics learn only from batches where two
    or more samples reach a place (one sample has no variance; a place no batch reached so stays at mean 0,
    variance 1), cumulatively over the place's first such batches, then with `momentum`; the variance is unbiased,
    as batch norm's.
    """

    def __init__(self, max_tokens: int, dim: int, momentum: float = 0.01, eps: float = 1e-6) -> None:
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(max_tokens, dim, dtype=torch.float32))
        self.register_buffer("running_var", torch.ones(max_tokens, dim, dtype=torch.float32))
        # float32 like the statistics, so `_keep_in_fp32_modules_strict` (which sets one dtype for the module) keeps
        # it as it is; exact up to 2^24 batches.
        self.register_buffer("batches_tracked", torch.zeros(max_tokens, dtype=torch.float32))

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "ConditionTokenNorm":
        # The statistics stay float32 when the model is cast (a bf16 deployment): in bf16 a mean of ~1 is
        # stored to ~4e-3, coarser than the variation it is there to bring out. Devices still move.
        kept = {name: getattr(self, name) for name in ("running_mean", "running_var", "batches_tracked")}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = getattr(self, name)
            if after.dtype != before.dtype:
                setattr(self, name, before.to(device=after.device))
        return self

    def _batch_statistics(
        self, tokens: torch.Tensor, token_mask: torch.Tensor, places: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per place: attended-token count `(P,)`, mean and (biased) variance `(P, C)` over the batch."""
        keep = token_mask.flatten().unsqueeze(-1)
        # Padding is filled, not multiplied by 0, so a non-finite padded state cannot reach the statistics.
        values = tokens.float().flatten(0, 1).masked_fill(~keep, 0.0)
        places = places.flatten()
        count = torch.zeros(self.running_mean.shape[0], device=values.device).index_add(0, places, keep.squeeze(-1).float())
        zeros = torch.zeros(self.running_mean.shape, device=values.device)
        denominator = count.clamp_min(1.0).unsqueeze(-1)
        mean = zeros.index_add(0, places, values) / denominator
        # Two passes: E[x^2] - E[x]^2 cancels catastrophically when the shared part dwarfs the variation.
        deviations = (values - mean[places]).masked_fill(~keep, 0.0)
        return count, mean, zeros.index_add(0, places, deviations.square()) / denominator

    @torch.no_grad()
    def _update(self, count: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
        # Masked with torch.where, not boolean indexing, so the update never waits for the device.
        seen = (count >= 2).unsqueeze(-1)
        rate = (1.0 / (self.batches_tracked + 1.0)).clamp_min(self.momentum).unsqueeze(-1)
        unbiased = var * (count / (count - 1).clamp_min(1.0)).unsqueeze(-1)
        for statistic, value in ((self.running_mean, mean), (self.running_var, unbiased)):
            statistic.copy_(torch.where(seen, statistic + rate * (value - statistic), statistic))
        self.batches_tracked.add_(seen.squeeze(-1).float())

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor, places: torch.Tensor) -> torch.Tensor:
        """`tokens` `(B, L, C)`, `token_mask` `(B, L)` bool, `places` `(B, L)` each token's index among the
        attended ones -> `(B, L, C)` standardised, in float32 (masked tokens are never attended to)."""
        mean, var = self.running_mean, self.running_var
        if self.training:
            count, batch_mean, batch_var = self._batch_statistics(tokens, token_mask, places)
            from_batch = (count >= 2).unsqueeze(-1)
            # where() copies now, so these are the running values from before this batch's update below.
            mean = torch.where(from_batch, batch_mean, mean)
            var = torch.where(from_batch, batch_var, var)
            self._update(count, batch_mean.detach(), batch_var.detach())
        return (tokens.float() - mean[places]) * torch.rsqrt(var[places] + self.eps)


__all__ = ["ConditionNorm", "ConditionTokenNorm", "StateConditionMixer", "concat_state", "pool_condition"]
