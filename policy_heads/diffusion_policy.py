"""Training and sampling logic shared by the diffusion experts; each head only supplies `model_forward`."""

import torch

from .conditioning import pool_condition
from .losses import masked_noise_mse
from .modeling_outputs import DiffusionPolicyOutput
from .scheduling import DDIMTables, add_noise_fp32, ddim_tables, ddim_update


def fit_to_horizon(
    actions: torch.Tensor, is_pad: torch.Tensor | None, horizon: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncate or zero-pad a chunk to `horizon` steps, as the reference does.

    Args:
        actions: `(B, T, A)`.
        is_pad: `(B, T)` bool/int or None (no padding).
        horizon: target length.

    Returns:
        `(B, horizon, A)` actions and `(B, horizon)` bool padding mask (added steps are marked padded).
    """
    batch, steps, _ = actions.shape
    if is_pad is None:
        is_pad = torch.zeros(batch, steps, dtype=torch.bool, device=actions.device)
    elif tuple(is_pad.shape) != (batch, steps):
        raise ValueError(f"is_pad has shape {tuple(is_pad.shape)}, expected {(batch, steps)} to match actions")
    is_pad = is_pad.to(device=actions.device, dtype=torch.bool)
    if steps >= horizon:
        return actions[:, :horizon], is_pad[:, :horizon]
    extra = horizon - steps
    actions = torch.cat([actions, actions.new_zeros(batch, extra, actions.shape[-1])], dim=1)
    is_pad = torch.cat([is_pad, is_pad.new_ones(batch, extra)], dim=1)
    return actions, is_pad


def _tile(x: torch.Tensor | None, times: int) -> torch.Tensor | None:
    """Repeat along the batch dim, sample-major (`[x; x; ...]`), matching the layout of the stacked noise draws."""
    if x is None or times == 1:
        return x
    return x.repeat(times, *([1] * (x.ndim - 1)))


class DiffusionPolicyMixin:
    """Adds the diffusion-policy `forward` to a `PreTrainedModel` that defines

    - `model_forward(x, t, global_cond, states) -> (B, T, A)` predicting the noise,
    - `self.noise_scheduler` (a DDIM scheduler) and a config with `prediction_horizon`, `action_dim`,
      `num_inference_timesteps` and `noise_samples`.
    """

    def forward(
        self,
        actions: torch.Tensor | None = None,
        hidden_states: torch.Tensor | None = None,
        states: torch.Tensor | None = None,
        is_pad: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num_inference_timesteps: int | None = None,
        noise: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
        state_mask: torch.Tensor | None = None,
        condition_tokens: torch.Tensor | None = None,
        condition_token_mask: torch.Tensor | None = None,
    ) -> DiffusionPolicyOutput:
        """Training loss when `actions` are given, otherwise sampled action chunks.

        Args:
            actions: `(B, T, action_dim)` normalised target chunk (any T: truncated or padded to the horizon).
            hidden_states: `(B, N, cond_dim)` condition (mean-pooled over N) or `(B, cond_dim)`.
            states: `(B, state_dim)` robot state.
            is_pad: `(B, T)` True for padded steps of `actions`.
            generator: random source for noise and timesteps (determinism in tests and evaluation).
            num_inference_timesteps: overrides `config.num_inference_timesteps` when sampling.
            noise: `(B, prediction_horizon, action_dim)` initial sampling noise (instead of drawing it), so
                each row of a batch can carry its own seeded noise: batched == one by one.
            action_mask: `(B, action_dim)` bool, True on the dimensions the sample's embodiment has (several
                embodiments padded to one width): the others are zero in the network's input, left out of the
                loss and zero in sampled chunks. None: all dimensions real (one embodiment; unchanged path).
            state_mask: `(B, state_dim)` bool, the real state dimensions; seen by the state projection of a head
                built with `state_mask_input`.
            condition_tokens: `(B, L, cond_dim)` token states for a head that attends to them (ScaleDP's
                `cross_attention`); condition_token_mask: `(B, L)` True on the tokens to attend to.

        Returns:
            `DiffusionPolicyOutput` with `loss` (training) or `actions` `(B, prediction_horizon, action_dim)`
            float32 on the device of `hidden_states` (inference).
        """
        if hidden_states is None:
            raise ValueError("hidden_states (the condition) is required")
        # Only when given: a head (or a benchmark's stand-in `sample`) without token inputs is called as before.
        tokens = {
            k: v for k, v in (("condition_tokens", condition_tokens), ("condition_token_mask", condition_token_mask))
            if v is not None
        }
        if actions is not None:
            loss = self.compute_loss(
                actions, hidden_states, states, is_pad, generator=generator, action_mask=action_mask,
                state_mask=state_mask, **tokens,
            )
            return DiffusionPolicyOutput(loss=loss)
        sampled = self.sample(
            hidden_states, states, generator=generator, num_inference_timesteps=num_inference_timesteps, noise=noise,
            action_mask=action_mask, state_mask=state_mask, **tokens,
        )
        return DiffusionPolicyOutput(actions=sampled)

    def compute_loss(
        self,
        actions: torch.Tensor,
        hidden_states: torch.Tensor,
        states: torch.Tensor | None = None,
        is_pad: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        action_mask: torch.Tensor | None = None,
        state_mask: torch.Tensor | None = None,
        condition_tokens: torch.Tensor | None = None,
        condition_token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Masked MSE of the noise prediction (or of the clean-chunk prediction with `prediction_type` "sample"),
        scalar float32; shapes as in `forward`."""
        cfg = self.config
        if actions.ndim != 3 or actions.shape[-1] != cfg.action_dim:
            raise ValueError(f"actions must be (B, T, {cfg.action_dim}), got shape {tuple(actions.shape)}")
        actions, is_pad = fit_to_horizon(actions, is_pad, cfg.prediction_horizon)
        # Padded steps carry no target. Neutralise them (as the data pipeline does) so whatever they hold cannot
        # reach the real steps through attention/convolution: the loss depends on real steps only.
        actions = actions.masked_fill(is_pad.unsqueeze(-1), 0.0)
        batch, device, draws = actions.shape[0], actions.device, cfg.noise_samples

        # `noise_samples` draws per sample share the sample's timestep, as in the reference.
        noise = torch.randn(
            (draws * batch, *actions.shape[1:]), generator=generator, device=_rng_device(generator, device),
            dtype=torch.float32,
        ).to(device)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (batch,), generator=generator,
            device=_rng_device(generator, device),
        ).to(device).repeat(draws)
        noisy = add_noise_fp32(self.noise_scheduler, _tile(actions, draws), noise, timesteps)
        action_mask = _check_mask(action_mask, batch, cfg.action_dim, "action_mask", device)
        if action_mask is not None:
            # Padded dimensions carry nothing into the network (as sampling keeps them at zero): their noise
            # cannot leak into the real dimensions' predictions, and the loss leaves them out.
            action_mask = _tile(action_mask, draws)
            noisy = noisy * action_mask.unsqueeze(1).to(noisy.dtype)
        extra = _extra_inputs(state_mask, condition_tokens, condition_token_mask, draws)
        # Drawn after the noise and timesteps, so runs without state dropout keep their random stream.
        states = self.drop_states(states, generator)
        prediction = self.model_forward(noisy, timesteps, _tile(hidden_states, draws), _tile(states, draws), **extra)
        # `prediction_type` "sample": the target is the clean chunk, so every noise level rewards reading the
        # condition; with "epsilon" (the reference) the low-noise levels are solved from the noisy chunk alone.
        target = _tile(actions, draws) if self.noise_scheduler.config.prediction_type == "sample" else noise
        return masked_noise_mse(prediction, target, _tile(is_pad, draws), action_mask)

    @torch.no_grad()
    def sample(
        self,
        hidden_states: torch.Tensor,
        states: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num_inference_timesteps: int | None = None,
        noise: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
        state_mask: torch.Tensor | None = None,
        condition_tokens: torch.Tensor | None = None,
        condition_token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DDIM sampling from Gaussian noise: `(B, prediction_horizon, action_dim)` float32 on the condition's device.

        With `action_mask` `(B, action_dim)` the padded dimensions are held at zero throughout (as training fed
        them), so the chunk's padded dimensions come out zero. `condition_tokens` `(B, L, cond_dim)` and
        `condition_token_mask` `(B, L)` go to every denoising step (a head with cross-attention)."""
        cfg = self.config
        batch = pool_condition(hidden_states).shape[0]
        shape = (batch, cfg.prediction_horizon, cfg.action_dim)
        # The running sample stays float32; the network sees it in its own dtype inside `model_forward`.
        device = hidden_states.device
        if noise is not None:
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise must have shape {shape} (B, prediction_horizon, action_dim), got {tuple(noise.shape)}")
            sample = noise.to(device=device, dtype=torch.float32)
        else:
            sample = torch.randn(shape, generator=generator, device=_rng_device(generator, device), dtype=torch.float32)
            sample = sample.to(device)
        tables = self.ddim_tables(int(num_inference_timesteps or cfg.num_inference_timesteps), device)
        denoise = getattr(self, "_compiled_denoiser", None) or self.model_forward
        keep = _check_mask(action_mask, batch, cfg.action_dim, "action_mask", device)
        keep = None if keep is None else keep.unsqueeze(1).to(torch.float32)
        extra = {k: v.to(device) for k, v in _extra_inputs(state_mask, condition_tokens, condition_token_mask).items()}
        states = self.drop_states(states, generator)
        # Timesteps and coefficients are device tensors indexed by a Python step number: the loop never
        # waits for the device, so a GPU can queue all steps' kernels back to back.
        for step in range(tables.timesteps.shape[0]):
            if keep is not None:
                sample = sample * keep
            noise_pred = denoise(sample, tables.timesteps[step].expand(batch), hidden_states, states, **extra)
            sample = ddim_update(tables, step, noise_pred, sample)
        if keep is not None:
            sample = sample * keep
        # float32 out: bf16 would quantise the actions (steps of ~0.008 near +-1) for no saving.
        return sample

    def drop_states(self, states: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """``config.state_dropout``: `(B, state_dim)` states with each row zeroed (the mean state under the default
        z-score normalisation) with that probability in training mode; all rows zeroed at 1.0, in any mode (the head
        never saw a state)."""
        rate = float(getattr(self.config, "state_dropout", 0.0))
        if states is None or rate <= 0.0:
            return states
        if rate >= 1.0:
            return torch.zeros_like(states)
        if not self.training:
            return states
        draw = torch.rand(states.shape[0], generator=generator, device=_rng_device(generator, states.device))
        return states * (draw.to(states.device) >= rate).unsqueeze(-1).to(states.dtype)

    def ddim_tables(self, num_inference_timesteps: int, device: torch.device) -> DDIMTables:
        """The DDIM constants of ``num_inference_timesteps`` steps on ``device``, built once and then reused."""
        cache = self.__dict__.setdefault("_ddim_tables_cache", {})
        key = (num_inference_timesteps, str(device))
        if key not in cache:
            cache[key] = ddim_tables(self.noise_scheduler, num_inference_timesteps, device)
        return cache[key]

    def compile_denoiser(self, mode: str | None = None, **compile_kwargs) -> None:
        """Run sampling's noise predictions through ``torch.compile(self.model_forward)`` (GPU serving).

        ``mode``: torch.compile's mode, e.g. ``"reduce-overhead"`` (CUDA graphs: one launch per DDIM step) or
        ``"max-autotune-no-cudagraphs"``; ``compile_kwargs`` go to ``torch.compile`` as well (``backend``...).
        Training is not affected. Compilation happens at the first sampling call of each input shape.
        """
        if not hasattr(torch, "compile"):
            raise RuntimeError(f"torch {torch.__version__} has no torch.compile: leave the head uncompiled")
        self.__dict__["_compiled_denoiser"] = torch.compile(self.model_forward, mode=mode, **compile_kwargs)


def _extra_inputs(
    state_mask: torch.Tensor | None,
    condition_tokens: torch.Tensor | None,
    condition_token_mask: torch.Tensor | None,
    times: int = 1,
) -> dict[str, torch.Tensor]:
    """The optional `model_forward` inputs that were given, tiled `times` along the batch; absent ones are left out so
    a head that does not take them (the UNet) is called as before."""
    given = {"state_mask": state_mask, "condition_tokens": condition_tokens, "condition_token_mask": condition_token_mask}
    return {name: _tile(value, times) for name, value in given.items() if value is not None}


def _check_mask(
    mask: torch.Tensor | None, batch: int, width: int, name: str, device: torch.device
) -> torch.Tensor | None:
    """`mask` as a `(B, width)` bool tensor on `device` (None stays None); a wrong shape names the argument."""
    if mask is None:
        return None
    if tuple(mask.shape) != (batch, width):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {(batch, width)} (B, action_dim)")
    return mask.to(device=device, dtype=torch.bool)


def _rng_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Draw where the generator lives (a CPU generator may drive a CUDA model), else on ``device``."""
    return generator.device if generator is not None else device


def expand_timesteps(t: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    """`t` as a scalar, `()` or `(B,)` tensor -> `(B,)` tensor on `device`."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape[0] != batch:
        raise ValueError(f"got {t.shape[0]} timesteps for a batch of {batch}")
    return t


__all__ = ["DiffusionPolicyMixin", "expand_timesteps", "fit_to_horizon"]
