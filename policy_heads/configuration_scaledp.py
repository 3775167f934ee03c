"""Configuration of the ScaleDP diffusion expert (a DiT-style transformer with adaLN-Zero conditioning)."""

# No `from __future__ import annotations`: `@strict` validates field types from the live annotations.
from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_common import (
    OPTIONAL_FIELDS,
    check_condition_tokens,
    check_prediction_type,
    check_state_dropout,
    drop_unset_optional_fields,
)

# name -> (depth, n_emb, num_heads). The sizes of the ScaleDP paper; "ScaleDP_tiny" is for tests and demos.
SCALEDP_PRESETS: dict[str, tuple[int, int, int]] = {
    "ScaleDP_tiny": (2, 64, 4),
    "ScaleDP_Ti": (8, 256, 4),
    "ScaleDP_S": (12, 384, 6),
    "ScaleDP_B": (12, 768, 12),
    "ScaleDP_L": (24, 1024, 16),
    "ScaleDP_H": (32, 1280, 16),
}
# Used when neither `model_size` nor the explicit sizes are given.
_DEFAULT_PRESET = "ScaleDP_S"


@strict
class ScaleDPPolicyConfig(PreTrainedConfig):
    r"""
    Configuration of [`ScaleDP`].

    Args:
        action_dim (`int`, defaults to 14): width of one action step (`A` in `(B, T, A)`).
        state_dim (`int`, defaults to 14): width of the robot state mixed into the condition; 0 for none.
        cond_dim (`int`, defaults to 1536): width of the condition `hidden_states` (the VLM hidden size).
        prediction_horizon (`int`, defaults to 16): number of action steps predicted (the chunk size).
        n_obs_steps (`int`, defaults to 2): kept for compatibility with the reference config; the condition is
            pooled to one token, so it does not change the network.
        model_size (`str`, *optional*): one of `SCALEDP_PRESETS`; fills `depth`, `n_emb`, `num_heads`.
        depth (`int`, *optional*): number of ScaleDP blocks.
        n_emb (`int`, *optional*): transformer width.
        num_heads (`int`, *optional*): attention heads; must divide `n_emb`.
        mlp_ratio (`float`, defaults to 4.0): MLP hidden width as a multiple of `n_emb`.
        time_as_cond (`bool`, defaults to True): the timestep conditions the blocks through adaLN (required).
        obs_as_cond (`bool`, defaults to True): the observation conditions the blocks through adaLN (required).
        combine_hidden_dim (`int`, defaults to 1024): hidden width of the MLP mixing condition and state.
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
        condition_norm (`bool`, defaults to False): standardise the pooled condition per feature (batch
            normalisation: batch statistics in training, running ones at inference) before it is mixed with the
            state. The reference feeds it raw: when the VLM's hidden states share a large constant part, the
            observation-dependent rest is too small for the head to pick up.
        cross_attention (`bool`, defaults to False): every block also attends to the VLM's token states (all attended
            prompt and answer tokens, each with a learnt position), not only to the pooled condition through adaLN.
            The reference pools: a small object's place in the image, carried by a few image tokens, averages away.
        max_condition_tokens (`int`, defaults to 1024): the most condition tokens a sample may have (the learnt
            positions); read with `cross_attention` only.
        condition_tokens_from (`str`, defaults to `"last_hidden_state"`): which token states the cross-attention
            reads: `"last_hidden_state"` the language model's last layer, or `"input_embeddings"` its input, where
            the image tokens are the vision tower's merged patches before any language layer has mixed them with
            the text. `cross_attention` only.
        condition_token_norm (`bool`, defaults to False): standardise the condition tokens per place and feature
            (batch statistics in training, running ones at inference) before the cross-attention reads them. A small object moves its patch's state
            by a fraction of a percent of what all states share; standardised, the change is of order one.
            `cross_attention` only.
    """

    model_type: ClassVar[str] = "scale_dp_policy"
    # Names used by the reference code base, kept readable/writable as aliases.
    attribute_map: ClassVar[dict[str, str]] = {
        "num_queries": "prediction_horizon",
        "input_dim": "action_dim",
        "output_dim": "action_dim",
        "chunk_size": "prediction_horizon",
    }

    action_dim: int = 14
    state_dim: int = 14
    cond_dim: int = 1536
    prediction_horizon: int = 16
    n_obs_steps: int = 2
    model_size: str | None = None
    depth: int | None = None
    n_emb: int | None = None
    num_heads: int | None = None
    mlp_ratio: int | float = 4.0
    time_as_cond: bool = True
    obs_as_cond: bool = True
    combine_hidden_dim: int = 1024
    num_train_timesteps: int = 100
    num_inference_timesteps: int = 10
    noise_samples: int = 1
    state_mask_input: bool = False
    state_dropout: int | float = 0.0
    prediction_type: str = "epsilon"
    condition_norm: bool = False
    cross_attention: bool = False
    max_condition_tokens: int = 1024
    condition_tokens_from: str = "last_hidden_state"
    condition_token_norm: bool = False

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)  # applies the aliases in `attribute_map` first
        self._resolve_model_size()
        self._check_combinations()

    def _resolve_model_size(self) -> None:
        preset_name = self.model_size if self.model_size is not None else _DEFAULT_PRESET
        if preset_name not in SCALEDP_PRESETS:
            raise ValueError(f"model_size={self.model_size!r} is not one of {sorted(SCALEDP_PRESETS)}")
        preset = dict(zip(("depth", "n_emb", "num_heads"), SCALEDP_PRESETS[preset_name], strict=True))
        for name, preset_value in preset.items():
            value = getattr(self, name)
            if value is None:
                setattr(self, name, preset_value)
            elif self.model_size is not None and value != preset_value:
                raise ValueError(
                    f"model_size={self.model_size!r} sets {name}={preset_value}, but {name}={value} was given; "
                    "pass either the preset or explicit sizes (with model_size=None)"
                )

    def _check_combinations(self) -> None:
        positive = ("action_dim", "prediction_horizon", "n_obs_steps", "depth", "n_emb", "num_heads")
        positive += ("combine_hidden_dim", "num_train_timesteps", "num_inference_timesteps", "noise_samples")
        positive += ("max_condition_tokens",)
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.state_dim < 0:
            raise ValueError(f"state_dim must be >= 0, got {self.state_dim}")
        check_state_dropout(self.state_dropout, self.state_dim)
        check_prediction_type(self.prediction_type)
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.n_emb % self.num_heads != 0:
            raise ValueError(f"n_emb={self.n_emb} is not divisible by num_heads={self.num_heads}")
        if (self.n_emb // self.num_heads) % 2 != 0:
            raise ValueError(f"n_emb={self.n_emb} / num_heads={self.num_heads} gives an odd head width")
        if not self.obs_as_cond or self.cond_dim < 1:
            raise ValueError(
                f"obs_as_cond={self.obs_as_cond} with cond_dim={self.cond_dim}: ScaleDP conditions every block on "
                "the observation, so obs_as_cond must be True and cond_dim >= 1"
            )
        if self.obs_as_cond and not self.time_as_cond:
            raise ValueError(
                f"obs_as_cond={self.obs_as_cond} requires time_as_cond=True (got time_as_cond={self.time_as_cond}): "
                "the timestep and observation share the adaLN condition"
            )
        if not self.cross_attention and self.max_condition_tokens != OPTIONAL_FIELDS["max_condition_tokens"]:
            raise ValueError(
                f"max_condition_tokens={self.max_condition_tokens} with cross_attention=False: the positions belong to "
                "the cross-attention; set cross_attention=True or leave max_condition_tokens at its default"
            )
        check_condition_tokens(self.cross_attention, self.condition_tokens_from, self.condition_token_norm)
        if self.condition_token_norm and self.noise_samples > 1:
            raise ValueError(
                f"condition_token_norm=True with noise_samples={self.noise_samples}: the noise draws repeat each sample's "
                "tokens, and the batch statistics would count the copies as samples; use noise_samples=1"
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


__all__ = ["SCALEDP_PRESETS", "ScaleDPPolicyConfig"]
