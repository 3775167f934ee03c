"""`condition_norm`: ScaleDP standardises the pooled VLM condition, so an observation-dependent part that is small
next to a constant one still reaches the head. Off (the reference) changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.test_policy_heads_models import ACT, COND, HORIZON, build, gen, inputs, randomize_zero_init


def _head(**overrides):
    head = build("scaledp", **overrides)
    randomize_zero_init(head)
    return head


def _whisper_condition(batch: int, seed: int = 0) -> torch.Tensor:
    """`(B, 1, COND)`: a large shared constant plus a 0.5% per-sample part (what the tiny VLM hands the head)."""
    g = torch.Generator().manual_seed(seed)
    constant = torch.randn(1, 1, COND, generator=g) * 3.0
    return constant + 0.015 * torch.randn(batch, 1, COND, generator=g)


def test_standardised_condition_reaches_the_head() -> None:
    head = _head(condition_norm=True).train()
    seen = {}
    head.condition_norm.register_forward_hook(lambda module, args, out: seen.setdefault("out", out))
    batch = dict(inputs(16), hidden_states=_whisper_condition(16))
    head(**batch, generator=gen())
    std = seen["out"].std(dim=0)
    assert torch.allclose(std, torch.ones_like(std), atol=0.05)  # each feature at unit spread across the batch
    assert head.condition_norm.num_batches_tracked == 1  # running statistics updated for inference
    # The reference head (no norm) sees the raw condition: its per-sample part is 0.5% of it.
    assert _head().condition_norm is None


def test_inference_uses_running_statistics_and_one_sample_batches_train() -> None:
    head = _head(condition_norm=True).train()
    for seed in range(3):
        head(**dict(inputs(8, seed=seed), hidden_states=_whisper_condition(8, seed)), generator=gen())
    head.eval()
    batch = inputs(4, seed=5)
    noise = torch.randn(4, HORIZON, ACT, generator=gen(7))
    together = head(hidden_states=batch["hidden_states"], states=batch["states"], noise=noise).actions
    alone = head(hidden_states=batch["hidden_states"][:1], states=batch["states"][:1], noise=noise[:1]).actions
    torch.testing.assert_close(alone[0], together[0])  # a row's actions do not depend on its batch
    head.train()
    stats = head.condition_norm.running_mean.clone()
    loss = head(**inputs(1), generator=gen()).loss  # batch statistics of one sample are undefined
    assert torch.isfinite(loss) and torch.equal(head.condition_norm.running_mean, stats)


def test_config_round_trip_and_checks(tmp_path: Path) -> None:
    from policy_heads import ScaleDP
    from qwen2_vla.arguments import ActionHeadArguments

    plain = _head()
    plain.save_pretrained(tmp_path / "plain")
    assert "condition_norm" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    head = _head(condition_norm=True).train()
    head(**dict(inputs(8), hidden_states=_whisper_condition(8)), generator=gen())
    head.save_pretrained(tmp_path / "norm")
    loaded = ScaleDP.from_pretrained(tmp_path / "norm")
    assert loaded.config.condition_norm
    for name, value in head.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="condition_norm=True is a ScaleDP option"):
        ActionHeadArguments(policy_head_type="unet_diffusion_policy", condition_norm=True)
