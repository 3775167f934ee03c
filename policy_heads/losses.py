"""Noise-prediction loss restricted to the real (non-padded) steps of an action chunk."""

import torch


def masked_noise_mse(
    noise_pred: torch.Tensor, noise: torch.Tensor, is_pad: torch.Tensor, action_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error over non-padded steps only, computed in float32.

    The reference multiplied by the mask and then averaged over *all* elements, so chunks with padding were
    down-weighted. Here the sum is divided by the number of real elements; an all-padded batch gives an exact 0
    that is still attached to the graph (its gradient is zero), so training code never sees NaN.

    Args:
        noise_pred: `(B, T, A)` predicted noise.
        noise: `(B, T, A)` target noise.
        is_pad: `(B, T)` bool, True where the step is padding.
        action_mask: `(B, A)` bool, True on the dimensions the sample's embodiment has (several embodiments
            padded to one width); None: every dimension is real (the single-embodiment path, unchanged).

    Returns:
        Scalar float32 loss: the mean over real steps x real dimensions.
    """
    sq_err = (noise_pred.float() - noise.float()).pow(2)
    valid = (~is_pad.bool()).unsqueeze(-1).to(sq_err.dtype)
    if action_mask is None:
        num_valid = valid.sum() * sq_err.shape[-1]
    else:
        if tuple(action_mask.shape) != (sq_err.shape[0], sq_err.shape[-1]):
            raise ValueError(
                f"action_mask has shape {tuple(action_mask.shape)}, expected {(sq_err.shape[0], sq_err.shape[-1])} (B, A)"
            )
        valid = valid * action_mask.to(device=sq_err.device, dtype=sq_err.dtype).unsqueeze(1)  # (B, T, A)
        num_valid = valid.sum()
    return (sq_err * valid).sum() / num_valid.clamp_min(1.0)


__all__ = ["masked_noise_mse"]
