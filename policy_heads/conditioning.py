"""Global condition of the diffusion experts: the VLM's (fused) hidden states mixed with the robot state."""

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


__all__ = ["ConditionNorm", "StateConditionMixer", "concat_state", "pool_condition"]
