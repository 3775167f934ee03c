"""`prediction_type`: the diffusion heads predict the noise (the reference) or the clean chunk ("sample"); training
target and DDIM sampling follow. Default "epsilon" changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from policy_heads.scheduling import ddim_step_fp32
from tests.test_policy_heads_models import ACT, COND, HORIZON, STATE, build, gen, inputs, randomize_zero_init


@pytest.mark.parametrize("kind", ["scaledp", "unet"])
def test_sample_prediction_sampling_equals_diffusers_steps(kind: str) -> None:
    head = build(kind, prediction_type="sample").eval()
    randomize_zero_init(head)
    assert head.noise_scheduler.config.prediction_type == "sample"
    cond, states = torch.randn(2, 1, COND, generator=gen(1)), torch.randn(2, STATE, generator=gen(2))
    noise = torch.randn(2, HORIZON, ACT, generator=gen(3))
    fast = head.sample(cond, states, noise=noise, num_inference_timesteps=5)
    head.noise_scheduler.set_timesteps(5)
    expected = noise.clone()
    with torch.no_grad():
        for t in head.noise_scheduler.timesteps:
            expected = ddim_step_fp32(head.noise_scheduler, head.model_forward(expected, t, cond, states), t, expected)
    torch.testing.assert_close(fast, expected, rtol=1e-6, atol=1e-6)
    # Each step's output is a clean-chunk estimate: the same network read as noise would give another chunk.
    epsilon = build(kind).eval()
    epsilon.load_state_dict(head.state_dict())
    assert (epsilon.sample(cond, states, noise=noise, num_inference_timesteps=5) - fast).abs().max() > 1e-2


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_training_target_follows_the_prediction_type(prediction_type: str) -> None:
    head = build("scaledp", prediction_type=prediction_type).train()
    batch = inputs(3)
    drawn = {}

    def predicts_the_clean_chunk(x, t, cond, states, **_):
        drawn["noisy"] = x
        return batch["actions"].clone()

    head.model_forward = predicts_the_clean_chunk
    loss = head(**batch, generator=gen()).loss
    if prediction_type == "sample":
        assert loss == 0  # the target is the clean chunk
    else:
        assert loss > 0.5  # the target is the unit-variance noise


def test_config_round_trip_and_checks(tmp_path: Path) -> None:
    from policy_heads import ScaleDP, UnetDiffusionPolicyConfig
    from qwen2_vla.arguments import ActionHeadArguments

    build("scaledp").save_pretrained(tmp_path / "epsilon")
    assert "prediction_type" not in json.loads((tmp_path / "epsilon" / "config.json").read_text())
    head = build("scaledp", prediction_type="sample")
    head.save_pretrained(tmp_path / "sample")
    loaded = ScaleDP.from_pretrained(tmp_path / "sample")
    assert loaded.config.prediction_type == "sample" and loaded.noise_scheduler.config.prediction_type == "sample"
    with pytest.raises(ValueError, match="prediction_type='v_prediction' is not one of"):
        build("scaledp", prediction_type="v_prediction")
    with pytest.raises(ValueError, match="prediction_type='noise' is not one of"):
        UnetDiffusionPolicyConfig(prediction_type="noise")
    with pytest.raises(ValueError, match="prediction_type='x0' is not one of"):
        ActionHeadArguments(prediction_type="x0")
