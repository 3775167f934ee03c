"""Configs of the diffusion experts: presets, validation, Auto registration, parameter counts."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel

import policy_heads
from policy_heads import (
    SCALEDP_PRESETS,
    ConditionalUnet1D,
    ScaleDP,
    ScaleDPPolicyConfig,
    UnetDiffusionPolicyConfig,
    build_policy_head_config,
)

# The reference's stage-2 setting: Qwen2-VL-2B hidden size, ALOHA bimanual state/action, chunk 50.
QWEN2_VL_2B_HIDDEN = 1536


def _count_on_meta(model_size: str) -> int:
    cfg = build_policy_head_config("scale_dp_policy", QWEN2_VL_2B_HIDDEN, 14, 14, 50, model_size=model_size)
    with torch.device("meta"):  # shapes only: no memory, no init
        model = AutoModel.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("model_size", "expected"), [("ScaleDP_L", 0.46e9), ("ScaleDP_H", 1.0e9)])
def test_large_preset_parameter_counts(model_size: str, expected: float) -> None:
    count = _count_on_meta(model_size)
    assert abs(count - expected) / expected < 0.10, f"{model_size}: {count / 1e9:.3f}B parameters"


def test_presets_set_sizes() -> None:
    assert SCALEDP_PRESETS["ScaleDP_L"] == (24, 1024, 16)
    assert SCALEDP_PRESETS["ScaleDP_H"] == (32, 1280, 16)
    cfg = ScaleDPPolicyConfig(model_size="ScaleDP_B")
    assert (cfg.depth, cfg.n_emb, cfg.num_heads) == (12, 768, 12)
    # Explicit sizes without a preset.
    cfg = ScaleDPPolicyConfig(depth=3, n_emb=96, num_heads=4)
    assert (cfg.depth, cfg.n_emb, cfg.num_heads, cfg.model_size) == (3, 96, 4, None)
    # Reference field names remain usable.
    cfg = ScaleDPPolicyConfig(num_queries=50, output_dim=7)
    assert (cfg.prediction_horizon, cfg.action_dim) == (50, 7)


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"model_size": "ScaleDP_L", "depth": 3}, ("model_size", "depth")),
        ({"n_emb": 100, "num_heads": 6}, ("n_emb", "num_heads")),
        ({"obs_as_cond": True, "time_as_cond": False}, ("obs_as_cond", "time_as_cond")),
        ({"obs_as_cond": False, "cond_dim": 32}, ("obs_as_cond", "cond_dim")),
        (
            {"num_inference_timesteps": 200, "num_train_timesteps": 100},
            ("num_inference_timesteps", "num_train_timesteps"),
        ),
        ({"model_size": "ScaleDP_XXL"}, ("model_size",)),
    ],
)
def test_scaledp_config_rejects_bad_combinations(kwargs: dict, names: tuple[str, ...]) -> None:
    with pytest.raises(ValueError) as err:
        ScaleDPPolicyConfig(**kwargs)
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"down_dims": [12, 16], "n_groups": 8}, ("down_dims", "n_groups")),
        ({"kernel_size": 4}, ("kernel_size",)),
        ({"diffusion_step_embed_dim": 2}, ("diffusion_step_embed_dim",)),
        ({"diffusion_step_embed_dim": 15}, ("diffusion_step_embed_dim",)),
        (
            {"num_inference_timesteps": 20, "num_train_timesteps": 10},
            ("num_inference_timesteps", "num_train_timesteps"),
        ),
    ],
)
def test_unet_config_rejects_bad_combinations(kwargs: dict, names: tuple[str, ...]) -> None:
    with pytest.raises(ValueError) as err:
        UnetDiffusionPolicyConfig(**kwargs)
    for name in names:
        assert name in str(err.value)


def test_edits_after_construction_are_validated_on_save(tmp_path) -> None:
    cfg = ScaleDPPolicyConfig(model_size="ScaleDP_tiny")
    cfg.num_heads = 5
    with pytest.raises(Exception, match="num_heads"):
        cfg.save_pretrained(tmp_path)


def test_field_types_are_checked() -> None:
    with pytest.raises(Exception, match="action_dim"):
        ScaleDPPolicyConfig(action_dim="14")


def test_auto_classes_build_both_heads() -> None:
    assert policy_heads.ScaleDP is ScaleDP  # importing the package is enough to register
    scaledp_cfg = AutoConfig.for_model("scale_dp_policy", model_size="ScaleDP_tiny", cond_dim=16, combine_hidden_dim=32)
    assert isinstance(scaledp_cfg, ScaleDPPolicyConfig)
    assert isinstance(AutoModel.from_config(scaledp_cfg), ScaleDP)
    unet_cfg = AutoConfig.for_model(
        "unet_diffusion_policy", global_cond_dim=16, down_dims=[16, 32], diffusion_step_embed_dim=16
    )
    assert isinstance(AutoModel.from_config(unet_cfg), ConditionalUnet1D)
    # The reference rebuilds the head config from a plain dict stored in the VLA config.
    rebuilt = AutoConfig.for_model(**scaledp_cfg.to_dict())
    assert rebuilt.to_dict() == scaledp_cfg.to_dict()


def test_build_policy_head_config() -> None:
    cfg = build_policy_head_config("scale_dp_policy", 64, 10, 7, 20, model_size="ScaleDP_Ti")
    assert isinstance(cfg, ScaleDPPolicyConfig)
    assert (cfg.cond_dim, cfg.state_dim, cfg.action_dim, cfg.prediction_horizon, cfg.depth) == (64, 10, 7, 20, 8)
    cfg = build_policy_head_config("unet_diffusion_policy", 64, 10, 7, 20, down_dims=[16, 32])
    assert isinstance(cfg, UnetDiffusionPolicyConfig)
    assert (cfg.global_cond_dim, cfg.state_dim, cfg.action_dim, cfg.prediction_horizon) == (64, 10, 7, 20)
    with pytest.raises(ValueError, match="policy_head_type"):
        build_policy_head_config("act", 64, 10, 7, 20)
    with pytest.raises(ValueError, match="model_size"):
        build_policy_head_config("unet_diffusion_policy", 64, 10, 7, 20, model_size="ScaleDP_H")
