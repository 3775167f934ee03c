"""DDIM noise scheduler shared by the diffusion experts, with its arithmetic kept in float32.

The reference asked users to patch diffusers because DDIM produced NaNs with 16-bit tensors. Here the scheduler
tables are built on the host in float32 and every scheduler operation receives float32 tensors; the callers cast
to the model dtype only at the network boundary, so sampling under bf16 autocast or with a bf16 model stays finite.
"""

import torch
from diffusers import DDIMScheduler


def build_ddim_scheduler(num_train_timesteps: int) -> DDIMScheduler:
    """The reference's scheduler: squaredcos_cap_v2 betas, clipped x0, epsilon prediction."""
    # The tables are tiny host-side constants. Build them on CPU in float32 even when the model is constructed
    # under a `torch.device("meta")` context or a 16-bit default dtype (both happen inside `from_pretrained`):
    # the first would leave them without data, the second makes `final_alpha_cumprod` 16-bit.
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.device("cpu"):
            return DDIMScheduler(
                num_train_timesteps=num_train_timesteps,
                beta_schedule="squaredcos_cap_v2",
                clip_sample=True,
                set_alpha_to_one=True,
                steps_offset=0,
                prediction_type="epsilon",
            )
    finally:
        torch.set_default_dtype(previous_dtype)


def add_noise_fp32(
    scheduler: DDIMScheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """Forward diffusion in float32.

    Args:
        clean: `(B, T, A)` clean action chunks.
        noise: `(B, T, A)` standard normal noise.
        timesteps: `(B,)` integer diffusion steps.

    Returns:
        `(B, T, A)` float32 noisy actions.
    """
    return scheduler.add_noise(clean.float(), noise.float(), timesteps)


def ddim_step_fp32(
    scheduler: DDIMScheduler, noise_pred: torch.Tensor, timestep: torch.Tensor | int, sample: torch.Tensor
) -> torch.Tensor:
    """One deterministic (eta=0) DDIM update in float32; `(B, T, A)` in, `(B, T, A)` float32 out."""
    return scheduler.step(model_output=noise_pred.float(), timestep=timestep, sample=sample.float()).prev_sample


__all__ = ["add_noise_fp32", "build_ddim_scheduler", "ddim_step_fp32"]
