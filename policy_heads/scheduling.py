"""DDIM noise scheduler shared by the diffusion experts, with its arithmetic kept in float32.

The reference asked users to patch diffusers because DDIM produced NaNs with 16-bit tensors. Here the scheduler
tables are built on the host in float32 and every scheduler operation receives float32 tensors; the callers cast
to the model dtype only at the network boundary, so sampling under bf16 autocast or with a bf16 model stays finite.
"""

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from .configuration_common import PREDICTION_TYPES, check_prediction_type


def build_ddim_scheduler(num_train_timesteps: int, prediction_type: str = "epsilon") -> DDIMScheduler:
    """The reference's scheduler: squaredcos_cap_v2 betas, clipped x0, epsilon prediction (``prediction_type``
    ``"sample"``: the network predicts the clean chunk instead)."""
    check_prediction_type(prediction_type)
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
                prediction_type=prediction_type,
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


@dataclass(frozen=True)
class DDIMTables:
    """Per-step constants of a deterministic (eta=0) DDIM sampling run, on the sampling device.

    ``timesteps (S,)`` int64; the others ``(S,)`` float32: ``sqrt(a_t)``, ``sqrt(1 - a_t)``, ``sqrt(a_prev)`` and
    ``sqrt(1 - a_prev)`` with ``a`` the cumulative alpha product. Indexing them with a Python step number gives
    device scalars, so a sampling loop never reads a value back to the host.
    """

    timesteps: torch.Tensor
    sqrt_alpha: torch.Tensor
    sqrt_one_minus_alpha: torch.Tensor
    sqrt_alpha_prev: torch.Tensor
    sqrt_one_minus_alpha_prev: torch.Tensor
    clip_range: float | None
    predicts_sample: bool = False


def ddim_tables(scheduler: DDIMScheduler, num_inference_steps: int, device: torch.device) -> DDIMTables:
    """The constants ``scheduler.step`` derives at every step, computed once (on the host, in float32).

    The same float32 operations as diffusers' ``DDIMScheduler.step`` with ``eta=0``, so
    :func:`ddim_update` reproduces it to the last bit. Only the configuration the experts use is supported
    (epsilon or sample prediction, no dynamic thresholding); anything else is an error rather than a silent
    difference.
    """
    config = scheduler.config
    if config.prediction_type not in PREDICTION_TYPES or config.thresholding:
        raise ValueError(
            f"fast DDIM sampling supports prediction_type {PREDICTION_TYPES} without thresholding, got "
            f"prediction_type={config.prediction_type!r}, thresholding={config.thresholding}"
        )
    scheduler.set_timesteps(num_inference_steps)
    timesteps = scheduler.timesteps.to("cpu", torch.int64)
    alphas = scheduler.alphas_cumprod.to("cpu", torch.float32)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32)
    prev = timesteps - config.num_train_timesteps // num_inference_steps
    alpha = alphas[timesteps]
    alpha_prev = torch.where(prev >= 0, alphas[prev.clamp_min(0)], final)
    return DDIMTables(
        timesteps=timesteps.to(device),
        sqrt_alpha=(alpha**0.5).to(device),
        sqrt_one_minus_alpha=((1 - alpha) ** 0.5).to(device),
        sqrt_alpha_prev=(alpha_prev**0.5).to(device),
        sqrt_one_minus_alpha_prev=((1 - alpha_prev) ** 0.5).to(device),
        clip_range=float(config.clip_sample_range) if config.clip_sample else None,
        predicts_sample=config.prediction_type == "sample",
    )


def ddim_update(tables: DDIMTables, step: int, noise_pred: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Step ``step`` (an index into ``tables``) of deterministic DDIM: ``(B, T, A)`` float32 in and out.

    ``ddim_step_fp32`` without the per-step table lookups and host-side branches of ``scheduler.step``.
    ``noise_pred`` is the network's output: the noise, or the clean chunk for ``predicts_sample`` tables.
    """
    if tables.predicts_sample:
        x0 = noise_pred.float()
        eps = (sample - tables.sqrt_alpha[step] * x0) / tables.sqrt_one_minus_alpha[step]
    else:
        eps = noise_pred.float()
        x0 = (sample - tables.sqrt_one_minus_alpha[step] * eps) / tables.sqrt_alpha[step]
    if tables.clip_range is not None:
        x0 = x0.clamp(-tables.clip_range, tables.clip_range)
    return tables.sqrt_alpha_prev[step] * x0 + tables.sqrt_one_minus_alpha_prev[step] * eps


__all__ = ["DDIMTables", "add_noise_fp32", "build_ddim_scheduler", "ddim_step_fp32", "ddim_tables", "ddim_update"]
