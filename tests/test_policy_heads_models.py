"""Behaviour of the diffusion experts: init, forward contract, masking, sampling, dtypes, save/load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel

from policy_heads import ConditionalUnet1D, ScaleDP, ScaleDPPolicyConfig, UnetDiffusionPolicyConfig
from policy_heads.losses import masked_noise_mse
from policy_heads.modeling_scaledp import ScaleDPFinalLayer, ZeroInitLinear

COND, STATE, ACT, HORIZON = 24, 5, 7, 10


def scaledp_config(**overrides) -> ScaleDPPolicyConfig:
    kwargs = dict(model_size="ScaleDP_tiny", cond_dim=COND, state_dim=STATE, action_dim=ACT)
    kwargs.update(prediction_horizon=HORIZON, combine_hidden_dim=32)
    kwargs.update(overrides)
    return ScaleDPPolicyConfig(**kwargs)


def unet_config(**overrides) -> UnetDiffusionPolicyConfig:
    kwargs = dict(global_cond_dim=COND, state_dim=STATE, action_dim=ACT, prediction_horizon=HORIZON)
    kwargs.update(down_dims=[16, 32], diffusion_step_embed_dim=16)
    kwargs.update(overrides)
    return UnetDiffusionPolicyConfig(**kwargs)


def build(kind: str, seed: int = 0, **overrides) -> ScaleDP | ConditionalUnet1D:
    torch.manual_seed(seed)
    return ScaleDP(scaledp_config(**overrides)) if kind == "scaledp" else ConditionalUnet1D(unet_config(**overrides))


def randomize_zero_init(model: nn.Module, seed: int = 0) -> None:
    """Give the zero-initialised layers random weights so outputs depend on every input."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ZeroInitLinear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.2)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.2)


def inputs(batch: int, steps: int = HORIZON, tokens: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "actions": torch.rand(batch, steps, ACT, generator=gen) * 2 - 1,
        "hidden_states": torch.randn(batch, tokens, COND, generator=gen),
        "states": torch.randn(batch, STATE, generator=gen),
        "is_pad": torch.zeros(batch, steps, dtype=torch.bool),
    }


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


KINDS = ["scaledp", "unet"]


# ---------------------------------------------------------------- adaLN-Zero init


def assert_adaln_zero(head: ScaleDP) -> None:
    zero_layers = [m for m in head.modules() if isinstance(m, ZeroInitLinear)]
    # Per block: the modulation; final layer: its modulation and the read-out.
    assert len(zero_layers) == head.config.depth + 2
    for layer in zero_layers:
        assert torch.count_nonzero(layer.weight) == 0 and torch.count_nonzero(layer.bias) == 0
    for block in head.blocks:
        assert torch.count_nonzero(block.adaLN_modulation[-1].weight) == 0
    final: ScaleDPFinalLayer = head.final_layer
    assert torch.count_nonzero(final.linear.weight) == 0 and torch.count_nonzero(final.adaLN_modulation[-1].weight) == 0
    # Other layers are initialised (not left at zero).
    assert torch.count_nonzero(head.x_embedder.weight) > 0 and torch.count_nonzero(head.pos_embed) > 0
    x = torch.randn(3, head.config.prediction_horizon, head.config.action_dim)
    out = head.model_forward(
        x, torch.tensor([0, 50, 99]), torch.randn(3, 2, head.config.cond_dim), torch.randn(3, STATE)
    )
    assert torch.count_nonzero(out) == 0


def test_adaln_zero_standalone() -> None:
    head = build("scaledp")
    assert_adaln_zero(head)
    head.init_weights()  # the reference re-ran init explicitly; must stay exact
    assert_adaln_zero(head)


class WrapperConfig(PreTrainedConfig):
    model_type = "policy_head_test_wrapper"
    head_config: dict | None = None


class CarelessWrapper(PreTrainedModel):
    """A larger model whose own `_init_weights` would overwrite every Linear it reaches."""

    config_class = WrapperConfig

    def __init__(self, config: WrapperConfig) -> None:
        super().__init__(config)
        self.backbone = nn.Linear(COND, COND)
        self.policy_head = AutoModel.from_config(AutoConfig.for_model(**config.head_config))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=1.0)
            nn.init.normal_(module.bias, std=1.0)


def test_adaln_zero_survives_parent_post_init_and_loading(tmp_path) -> None:
    wrapper = CarelessWrapper(WrapperConfig(head_config=scaledp_config().to_dict()))
    assert torch.count_nonzero(wrapper.backbone.bias) > 0  # the parent init did run
    assert_adaln_zero(wrapper.policy_head)
    wrapper.init_weights()
    assert_adaln_zero(wrapper.policy_head)

    # from_pretrained with the head missing from the checkpoint: the missing weights are initialised by the
    # head's own rules, not the parent's.
    wrapper.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("policy_head.")}, tmp_path / "model.safetensors")
    reloaded = CarelessWrapper.from_pretrained(tmp_path)
    assert torch.equal(reloaded.backbone.weight, wrapper.backbone.weight)
    assert_adaln_zero(reloaded.policy_head)


# ---------------------------------------------------------------- forward contract


@pytest.mark.parametrize("kind", KINDS)
def test_training_returns_loss_and_inputs_untouched(kind: str) -> None:
    head = build(kind)
    batch = inputs(4, steps=HORIZON + 3, tokens=3)
    batch["is_pad"][:, -2:] = True
    before = {k: v.clone() for k, v in batch.items()}
    out = head(**batch)
    assert list(out.keys())[0] == "loss" and out.actions is None
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.equal(before[k], batch[k]) for k in batch)
    sampled = head(hidden_states=batch["hidden_states"], states=batch["states"]).actions
    assert sampled.shape == (4, HORIZON, ACT)
    assert all(torch.equal(before[k], batch[k]) for k in batch)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_size", [1, 5])
def test_sampling_any_batch_size(kind: str, batch_size: int) -> None:
    head = build(kind)
    if kind == "scaledp":
        randomize_zero_init(head)
    batch = inputs(batch_size)
    out = head(hidden_states=batch["hidden_states"], states=batch["states"], generator=gen())
    assert out.loss is None
    actions = out.actions
    assert actions.shape == (batch_size, HORIZON, ACT)
    assert actions.dtype == torch.float32 and actions.device == batch["hidden_states"].device
    assert torch.isfinite(actions).all() and actions.abs().max() <= 1.0 + 1e-5  # clip_sample keeps [-1, 1]
    # Same generator -> same sample; a different one -> a different sample.
    again = head(hidden_states=batch["hidden_states"], states=batch["states"], generator=gen()).actions
    other = head(hidden_states=batch["hidden_states"], states=batch["states"], generator=gen(1)).actions
    assert torch.equal(actions, again) and not torch.equal(actions, other)


@pytest.mark.parametrize("kind", KINDS)
def test_padded_steps_do_not_change_loss(kind: str) -> None:
    head = build(kind)
    if kind == "scaledp":
        randomize_zero_init(head)  # a zero-initialised head predicts 0 whatever the input
    batch = inputs(3)
    batch["is_pad"][0, 6:] = True
    batch["is_pad"][2, 3:] = True
    loss = head(**batch, generator=gen()).loss
    changed = dict(batch, actions=batch["actions"].clone())
    changed["actions"][batch["is_pad"]] = 123.0
    assert torch.equal(head(**changed, generator=gen()).loss, loss)
    changed["actions"][0, 0] = 0.5  # a real step does change it
    assert not torch.equal(head(**changed, generator=gen()).loss, loss)


def test_masked_loss_is_mean_over_real_steps() -> None:
    pred = torch.zeros(2, 4, 3)
    target = torch.ones(2, 4, 3)
    target[:, 2:] = 10.0  # huge error on the padded steps
    is_pad = torch.zeros(2, 4, dtype=torch.bool)
    is_pad[:, 2:] = True
    assert masked_noise_mse(pred, target, is_pad).item() == 1.0  # not diluted by, nor counting, padding
    pred.requires_grad_(True)
    all_pad = masked_noise_mse(pred, target, torch.ones(2, 4, dtype=torch.bool))
    assert all_pad.item() == 0.0 and torch.isfinite(all_pad)
    all_pad.backward()
    assert torch.count_nonzero(pred.grad) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_all_padded_batch_is_finite(kind: str) -> None:
    head = build(kind)
    batch = inputs(2)
    batch["is_pad"][:] = True
    loss = head(**batch).loss
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()


@pytest.mark.parametrize("kind", KINDS)
def test_chunks_are_truncated_or_padded_to_horizon(kind: str) -> None:
    head = build(kind)
    long = inputs(2, steps=HORIZON + 4)
    truncated = {k: (v[:, :HORIZON] if k in ("actions", "is_pad") else v) for k, v in long.items()}
    assert torch.equal(head(**long, generator=gen()).loss, head(**truncated, generator=gen()).loss)

    short = inputs(2, steps=HORIZON - 4)
    padded = dict(short)
    padded["actions"] = torch.cat([short["actions"], torch.zeros(2, 4, ACT)], dim=1)
    padded["is_pad"] = torch.cat([short["is_pad"], torch.ones(2, 4, dtype=torch.bool)], dim=1)
    assert torch.equal(head(**short, generator=gen()).loss, head(**padded, generator=gen()).loss)
    no_mask = {k: v for k, v in short.items() if k != "is_pad"}  # is_pad=None: every given step is real
    assert torch.equal(head(**no_mask, generator=gen()).loss, head(**short, generator=gen()).loss)


@pytest.mark.parametrize("kind", KINDS)
def test_noise_samples_repeat_each_sample(kind: str) -> None:
    head = build(kind, noise_samples=3)
    seen: list[int] = []
    original = head.model_forward

    def spy(x, t, global_cond, states=None):
        seen.append(x.shape[0])
        return original(x, t, global_cond, states)

    head.model_forward = spy
    loss = head(**inputs(4)).loss
    assert torch.isfinite(loss) and seen == [12]


@pytest.mark.parametrize("kind", KINDS)
def test_condition_tokens_are_mean_pooled(kind: str) -> None:
    head = build(kind)
    if kind == "scaledp":
        randomize_zero_init(head)
    x = torch.randn(2, HORIZON, ACT)
    cond = torch.randn(2, 4, COND)
    states = torch.randn(2, STATE)
    t = torch.tensor([3, 70])
    pooled = head.model_forward(x, t, cond.mean(dim=1, keepdim=True), states)
    torch.testing.assert_close(head.model_forward(x, t, cond, states), pooled)
    torch.testing.assert_close(head.model_forward(x, t, cond.mean(dim=1), states), pooled)
    assert not torch.allclose(head.model_forward(x, t, cond, states + 1), pooled)  # the state is used


def test_missing_or_wrong_state_is_rejected() -> None:
    head = build("scaledp")
    batch = inputs(2)
    with pytest.raises(ValueError, match="state_dim"):
        head(actions=batch["actions"], hidden_states=batch["hidden_states"])
    with pytest.raises(ValueError, match="state_dim"):
        head(hidden_states=batch["hidden_states"], states=torch.randn(2, STATE + 1))
    with pytest.raises(ValueError, match="actions"):
        head(actions=torch.randn(2, HORIZON, ACT + 1), hidden_states=batch["hidden_states"], states=batch["states"])
    stateless = build("scaledp", state_dim=0)
    assert stateless(hidden_states=batch["hidden_states"]).actions.shape == (2, HORIZON, ACT)


def test_fused_and_explicit_attention_agree() -> None:
    head = build("scaledp")
    randomize_zero_init(head)
    x, t, cond, states = torch.randn(2, HORIZON, ACT), torch.tensor([5, 90]), torch.randn(2, 1, COND), torch.randn(2, 5)
    fused = head.model_forward(x, t, cond, states)
    for block in head.blocks:
        block.attn.fused_attn = False
    torch.testing.assert_close(head.model_forward(x, t, cond, states), fused, rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_gives_same_gradients() -> None:
    head = build("scaledp")
    randomize_zero_init(head)
    head.train()
    batch = inputs(2)
    head(**batch, generator=gen()).loss.backward()
    reference = {n: p.grad.clone() for n, p in head.named_parameters()}
    head.zero_grad()
    head.activation_checkpointing_enable()
    head(**batch, generator=gen()).loss.backward()
    for name, param in head.named_parameters():
        torch.testing.assert_close(param.grad, reference[name], msg=name)


# ---------------------------------------------------------------- UNet specifics


@pytest.mark.parametrize(
    ("horizon", "action_dim", "down_dims"), [(50, 7, [16, 32, 64]), (13, 3, [16, 32]), (16, 10, [16])]
)
def test_unet_honours_horizon_and_action_dim(horizon: int, action_dim: int, down_dims: list[int]) -> None:
    torch.manual_seed(0)
    head = ConditionalUnet1D(unet_config(prediction_horizon=horizon, action_dim=action_dim, down_dims=down_dims))
    cond, states = torch.randn(3, 1, COND), torch.randn(3, STATE)
    assert head(hidden_states=cond, states=states).actions.shape == (3, horizon, action_dim)
    loss = head(actions=torch.rand(3, horizon, action_dim), hidden_states=cond, states=states).loss
    assert torch.isfinite(loss)
    assert head.model_forward(torch.randn(3, horizon, action_dim), 4, cond, states).shape == (3, horizon, action_dim)


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_and_bf16_model_sample_finite(kind: str) -> None:
    head = build(kind)
    if kind == "scaledp":
        randomize_zero_init(head)
    batch = inputs(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actions = head(hidden_states=batch["hidden_states"], states=batch["states"]).actions
        loss = head(**batch).loss
    assert torch.isfinite(actions).all() and torch.isfinite(loss)
    loss.backward()

    head = head.to(torch.bfloat16)
    cond, states = batch["hidden_states"].bfloat16(), batch["states"].bfloat16()
    actions = head(hidden_states=cond, states=states).actions
    assert actions.dtype == torch.float32 and torch.isfinite(actions).all()  # samples come back in float32
    assert torch.isfinite(head(actions=batch["actions"].bfloat16(), hidden_states=cond, states=states).loss)


def test_scheduler_stays_float32_under_bf16_default_dtype() -> None:
    # `from_pretrained(dtype=torch.bfloat16)` builds models under a bf16 default dtype.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        head = build("scaledp")
    finally:
        torch.set_default_dtype(previous)
    sched = head.noise_scheduler
    assert head.x_embedder.weight.dtype == torch.bfloat16
    assert sched.alphas_cumprod.dtype == torch.float32 and sched.final_alpha_cumprod.dtype == torch.float32
    randomize_zero_init(head)
    batch = inputs(2)
    actions = head(hidden_states=batch["hidden_states"].bfloat16(), states=batch["states"].bfloat16()).actions
    assert torch.isfinite(actions).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_bf16_sampling(kind: str) -> None:
    head = build(kind).to("cuda", torch.bfloat16)
    batch = inputs(2)
    actions = head(hidden_states=batch["hidden_states"].cuda().bfloat16(), states=batch["states"].cuda().bfloat16())
    assert actions.actions.device.type == "cuda" and torch.isfinite(actions.actions).all()


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind", KINDS)
def test_save_pretrained_round_trip(kind: str, tmp_path) -> None:
    head = build(kind)
    if kind == "scaledp":
        randomize_zero_init(head)
    head.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is type(head)
    saved_cfg, loaded_cfg = head.config.to_dict(), loaded.config.to_dict()
    assert {k: v for k, v in loaded_cfg.items() if k != "_name_or_path"} == {
        k: v for k, v in saved_cfg.items() if k != "_name_or_path"
    }
    original, restored = head.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    batch = inputs(2)
    a = head(hidden_states=batch["hidden_states"], states=batch["states"], generator=gen(3)).actions
    b = loaded(hidden_states=batch["hidden_states"], states=batch["states"], generator=gen(3)).actions
    assert torch.equal(a, b)
