"""Configuration of the 1-D conditional UNet diffusion expert (the DiVLA variant, Chi-style FiLM residual blocks)."""

# No `from __future__ import annotations`: `@strict` validates field types from the live annotations.
from dataclasses import field
from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_common import check_prediction_type, check_state_dropout, drop_unset_optional_fields


@strict
class UnetDiffusionPolicyConfig(PreTrainedConfig):
    r"""
    Configuration of [`ConditionalUnet1D`].

    Args:
        global_cond_dim (`int`, defaults to 1536): width of the condition `hidden_states` (the VLM hidden size).
        action_dim (`int`, defaults to 14): width of one action step (`A` in `(B, T, A)`).
        state_dim (`int`, defaults to 14): width of the robot state mixed into the condition; 0 for none.
        prediction_horizon (`int`, defaults to 16): number of action steps predicted (the chunk size).
        diffusion_step_embed_dim (`int`, defaults to 256): width of the timestep embedding (even, at least 4).
        down_dims (`list[int]`, defaults to `[256, 512, 1024]`): channels per UNet level; the sequence is halved
            between levels, so it is padded internally to a multiple of `2 ** (len(down_dims) - 1)`.
        kernel_size (`int`, defaults to 5): odd 1-D convolution kernel size.
        n_groups (`int`, defaults to 8): GroupNorm groups; must divide every entry of `down_dims`.
        num_train_timesteps (`int`, defaults to 100): diffusion steps of the DDIM training schedule.
        num_inference_timesteps (`int`, defaults to 10): DDIM steps when sampling.
        noise_samples (`int`, defaults to 1): noise draws per training sample (each sample is repeated).
        state_mask_input (`bool`, defaults to False): the state projection also sees the per-dimension state mask
            (a model over several embodiments, their states zero-padded to `state_dim`); its input widens by
            `state_dim`.
        prediction_type (`str`, defaults to `"epsilon"`): what the network predicts: `"epsilon"` the noise (the
            reference), `"sample"` the clean action chunk. With "epsilon" the low-noise levels are solved from the noisy
            chunk itself, so little of the loss rewards reading the condition; "sample" makes every level depend on it.
        state_dropout (`float`, defaults to 0.0): probability that a training sample's state is replaced by zeros
            before it reaches the head, so the head must read the observation (the cameras) instead of
            extrapolating the state; 1.0 hides the state always, at inference too. 0 (the reference): always seen.
    """

    model_type: ClassVar[str] = "unet_diffusion_policy"
    # Names used by the reference code base and by the ScaleDP config, so one set of kwargs builds either head.
    attribute_map: ClassVar[dict[str, str]] = {
        "num_queries": "prediction_horizon",
        "chunk_size": "prediction_horizon",
        "input_dim": "action_dim",
        "output_dim": "action_dim",
        "cond_dim": "global_cond_dim",
    }

    global_cond_dim: int = 1536
    action_dim: int = 14
    state_dim: int = 14
    prediction_horizon: int = 16
    diffusion_step_embed_dim: int = 256
    down_dims: list[int] = field(default_factory=lambda: [256, 512, 1024])
    kernel_size: int = 5
    n_groups: int = 8
    num_train_timesteps: int = 100
    num_inference_timesteps: int = 10
    noise_samples: int = 1
    state_mask_input: bool = False
    state_dropout: int | float = 0.0
    prediction_type: str = "epsilon"

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)  # applies the aliases in `attribute_map` first
        self._check_combinations()

    def _check_combinations(self) -> None:
        positive = ("global_cond_dim", "action_dim", "prediction_horizon", "diffusion_step_embed_dim", "kernel_size")
        positive += ("n_groups", "num_train_timesteps", "num_inference_timesteps")
        positive += ("noise_samples",)
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.state_dim < 0:
            raise ValueError(f"state_dim must be >= 0, got {self.state_dim}")
        check_state_dropout(self.state_dropout, self.state_dim)
        check_prediction_type(self.prediction_type)
        if not self.down_dims or any(d < 1 for d in self.down_dims):
            raise ValueError(f"down_dims must be a non-empty list of positive ints, got {self.down_dims}")
        bad = [d for d in self.down_dims if d % self.n_groups != 0]
        if bad:
            raise ValueError(f"down_dims={self.down_dims} has entries {bad} not divisible by n_groups={self.n_groups}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size} must be odd so convolutions keep the horizon length")
        if self.diffusion_step_embed_dim % 2 != 0 or self.diffusion_step_embed_dim < 4:
            # Sine/cosine pairs, and Chi's frequency spacing divides by (half the width - 1).
            raise ValueError(
                f"diffusion_step_embed_dim={self.diffusion_step_embed_dim} must be even and at least 4 (sin/cos pairs)"
            )
        if self.num_inference_timesteps > self.num_train_timesteps:
            raise ValueError(
                f"num_inference_timesteps={self.num_inference_timesteps} exceeds "
                f"num_train_timesteps={self.num_train_timesteps}"
            )

    def to_dict(self) -> dict:
        """As saved in ``config.json``; the optional fields (``configuration_common.OPTIONAL_FIELDS``) only when set,
        so a config that does not use them keeps exactly the fields it had before they existed."""
        return drop_unset_optional_fields(super().to_dict())

    def validate_architecture(self) -> None:
        """Part of `@strict` validation (also run by `save_pretrained`): re-checks edits made after construction."""
        self._check_combinations()


__all__ = ["UnetDiffusionPolicyConfig"]
