"""`state_dropout`: the action head can be kept from extrapolating the robot state (copycat) and made to read the
cameras. 0 (the reference) changes nothing; 1.0 hides the state in training and at inference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.test_policy_heads_models import ACT, HORIZON, STATE, build, gen, inputs, randomize_zero_init


def _head(kind: str, **overrides):
    head = build(kind, **overrides)
    randomize_zero_init(head)
    return head


@pytest.mark.parametrize("kind", ["scaledp", "unet"])
def test_full_dropout_makes_the_head_blind_to_the_state(kind: str) -> None:
    batch = inputs(3)
    other_states = dict(batch, states=batch["states"] + 5.0)
    blind = _head(kind, state_dropout=1.0).train()
    assert blind(**batch, generator=gen()).loss == blind(**other_states, generator=gen()).loss
    blind.eval()  # also at inference: the head never saw a state
    sampled = blind(hidden_states=batch["hidden_states"], states=batch["states"], generator=gen()).actions
    other = blind(hidden_states=batch["hidden_states"], states=other_states["states"], generator=gen()).actions
    torch.testing.assert_close(sampled, other, rtol=0, atol=0)
    assert sampled.shape == (3, HORIZON, ACT)
    # The same head without dropout does read the state: the equalities above could fail.
    seeing = _head(kind).train()
    assert seeing(**batch, generator=gen()).loss != seeing(**other_states, generator=gen()).loss


def test_zero_dropout_is_the_reference_path_and_partial_dropout_only_trains() -> None:
    batch = inputs(8)
    head = _head("scaledp").train()
    used = gen()
    head(**batch, generator=used)
    # Without dropout the loss draws exactly the noise and the timesteps, as before the option existed.
    expected = gen()
    torch.randn((8, HORIZON, ACT), generator=expected)
    torch.randint(0, head.config.num_train_timesteps, (8,), generator=expected)
    assert torch.equal(used.get_state(), expected.get_state())
    # With partial dropout the extra draw comes after them: the noise and timesteps are unchanged.
    dropping = _head("scaledp", state_dropout=0.5).train()
    dropping_gen = gen()
    dropping(**batch, generator=dropping_gen)
    assert not torch.equal(dropping_gen.get_state(), expected.get_state())
    half = _head("scaledp", state_dropout=0.5).train()
    states = batch["states"]
    dropped = half.drop_states(states, gen(1))
    zero_rows = (dropped == 0).all(dim=-1)
    assert 0 < int(zero_rows.sum()) < 8  # some rows hidden, some kept (fixed generator)
    torch.testing.assert_close(dropped[~zero_rows], states[~zero_rows], rtol=0, atol=0)
    assert states.abs().min() > 0  # the input was not modified in place
    half.eval()
    assert half.drop_states(states, gen(1)) is states


def test_config_checks_and_round_trip(tmp_path: Path) -> None:
    from policy_heads import ScaleDPPolicyConfig
    from tests.test_policy_heads_models import scaledp_config, unet_config

    with pytest.raises(ValueError, match=r"state_dropout must be in \[0, 1\]"):
        scaledp_config(state_dropout=1.5)
    with pytest.raises(ValueError, match="state_dropout=0.5 with state_dim=0"):
        unet_config(state_dropout=0.5, state_dim=0)
    for name, config in (("plain", scaledp_config()), ("unet", unet_config())):
        config.save_pretrained(tmp_path / name)
        assert "state_dropout" not in json.loads((tmp_path / name / "config.json").read_text())  # as before
    scaledp_config(state_dropout=1.0).save_pretrained(tmp_path / "blind")
    loaded = ScaleDPPolicyConfig.from_pretrained(tmp_path / "blind")
    assert loaded.state_dropout == 1.0 and loaded.state_dim == STATE


def test_cli_flag_reaches_the_head_config() -> None:
    import transformers

    from qwen2_vla.arguments import ActionHeadArguments

    parser = transformers.HfArgumentParser(ActionHeadArguments)
    (args,) = parser.parse_args_into_dataclasses(args=["--state_dropout", "1.0", "--state_dim", "14"])
    assert args.state_dropout == 1.0
    with pytest.raises(ValueError, match="state_dropout"):
        ActionHeadArguments(state_dropout=-0.1)
