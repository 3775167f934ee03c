"""The UNet (DiVLA) head has the reference's parameter layout: its checkpoints load strictly and mean the same.

`reference_unet_shapes` is an explicit table of the reference `ConditionalUnet1D`'s state dict (names and shapes),
derived from its module structure; `reference_noise_pred` is the reference's forward pass written with functional
ops over such a state dict. Neither uses this project's module code.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from policy_heads import ConditionalUnet1D, ScaleDP, ScaleDPPolicyConfig, UnetDiffusionPolicyConfig, load_pretrained_dit
from qwen2_vla.model_load_utils import HEAD_FULLY_TRAINED

ACT, COND, STATE, DSED, KERNEL = 7, 24, 5, 16, 5
DOWN_DIMS = [16, 32, 64]  # three levels: two down- and two up-sampling stages


def reference_unet_shapes(
    action_dim: int, cond_dim: int, state_dim: int, dsed: int, down_dims: list[int], kernel: int
) -> dict[str, tuple[int, ...]]:
    """Every tensor of the reference head's state dict with its shape."""
    shapes: dict[str, tuple[int, ...]] = {
        "norm_after_pool.weight": (cond_dim,),
        "norm_after_pool.bias": (cond_dim,),
        "combine.weight": (cond_dim, cond_dim + state_dim),
        "combine.bias": (cond_dim,),
        # Index 0 is the parameter-free sinusoidal embedding, 2 the Mish.
        "diffusion_step_encoder.1.weight": (4 * dsed, dsed),
        "diffusion_step_encoder.1.bias": (4 * dsed,),
        "diffusion_step_encoder.3.weight": (dsed, 4 * dsed),
        "diffusion_step_encoder.3.bias": (dsed,),
    }
    film_dim = dsed + cond_dim

    def conv_block(prefix: str, c_in: int, c_out: int) -> None:
        shapes[f"{prefix}.block.0.weight"] = (c_out, c_in, kernel)
        shapes[f"{prefix}.block.0.bias"] = (c_out,)
        shapes[f"{prefix}.block.1.weight"] = (c_out,)  # GroupNorm
        shapes[f"{prefix}.block.1.bias"] = (c_out,)

    def res_block(prefix: str, c_in: int, c_out: int) -> None:
        conv_block(f"{prefix}.blocks.0", c_in, c_out)
        conv_block(f"{prefix}.blocks.1", c_out, c_out)
        shapes[f"{prefix}.cond_encoder.1.weight"] = (2 * c_out, film_dim)
        shapes[f"{prefix}.cond_encoder.1.bias"] = (2 * c_out,)
        if c_in != c_out:
            shapes[f"{prefix}.residual_conv.weight"] = (c_out, c_in, 1)
            shapes[f"{prefix}.residual_conv.bias"] = (c_out,)

    dims = [action_dim, *down_dims]
    levels = list(zip(dims[:-1], dims[1:], strict=True))
    for i, (c_in, c_out) in enumerate(levels):
        res_block(f"down_modules.{i}.0", c_in, c_out)
        res_block(f"down_modules.{i}.1", c_out, c_out)
        if i < len(levels) - 1:  # Downsample1d: Conv1d(dim, dim, 3, 2, 1) named `conv`
            shapes[f"down_modules.{i}.2.conv.weight"] = (c_out, c_out, 3)
            shapes[f"down_modules.{i}.2.conv.bias"] = (c_out,)
    for i in range(2):
        res_block(f"mid_modules.{i}", down_dims[-1], down_dims[-1])
    for i, (c_in, c_out) in enumerate(reversed(levels[1:])):
        res_block(f"up_modules.{i}.0", 2 * c_out, c_in)
        res_block(f"up_modules.{i}.1", c_in, c_in)
        # Upsample1d: ConvTranspose1d(dim, dim, 4, 2, 1), weight (in, out, k)
        shapes[f"up_modules.{i}.2.conv.weight"] = (c_in, c_in, 4)
        shapes[f"up_modules.{i}.2.conv.bias"] = (c_in,)
    conv_block("final_conv.0", down_dims[0], down_dims[0])
    shapes["final_conv.1.weight"] = (action_dim, down_dims[0], 1)
    shapes["final_conv.1.bias"] = (action_dim,)
    return shapes


def reference_state_dict(seed: int, state_dim: int = STATE) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = reference_unet_shapes(ACT, COND, state_dim, DSED, DOWN_DIMS, KERNEL)
    state = {}
    for name, shape in shapes.items():
        if name.endswith(".weight") and len(shape) == 1:  # norms: around 1
            state[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            state[name] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    return state


def unet(state_dim: int = STATE, **overrides) -> ConditionalUnet1D:
    cfg = dict(global_cond_dim=COND, state_dim=state_dim, action_dim=ACT, prediction_horizon=8)
    cfg.update(diffusion_step_embed_dim=DSED, down_dims=DOWN_DIMS, kernel_size=KERNEL, n_groups=8)
    cfg.update(overrides)
    return ConditionalUnet1D(UnetDiffusionPolicyConfig(**cfg))


def reference_noise_pred(
    sd: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, states: torch.Tensor | None
) -> torch.Tensor:
    """The reference `model_forward` in functional form: `x` `(B, T, A)`, `t` `(B,)`, `cond` `(B, 1, C)`."""
    groups = 8

    def conv_block(prefix: str, h: torch.Tensor) -> torch.Tensor:
        w = sd[f"{prefix}.block.0.weight"]
        h = F.conv1d(h, w, sd[f"{prefix}.block.0.bias"], padding=w.shape[-1] // 2)
        h = F.group_norm(h, groups, sd[f"{prefix}.block.1.weight"], sd[f"{prefix}.block.1.bias"])
        return F.mish(h)

    def res_block(prefix: str, h: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        out = conv_block(f"{prefix}.blocks.0", h)
        embed = F.linear(F.mish(feature), sd[f"{prefix}.cond_encoder.1.weight"], sd[f"{prefix}.cond_encoder.1.bias"])
        embed = embed.reshape(embed.shape[0], 2, out.shape[1], 1)
        out = conv_block(f"{prefix}.blocks.1", embed[:, 0] * out + embed[:, 1])
        if f"{prefix}.residual_conv.weight" in sd:
            h = F.conv1d(h, sd[f"{prefix}.residual_conv.weight"], sd[f"{prefix}.residual_conv.bias"])
        return out + h

    g = cond.squeeze(1)
    g = F.layer_norm(g, (g.shape[-1],), sd["norm_after_pool.weight"], sd["norm_after_pool.bias"])
    if states is not None:
        g = torch.cat([g, states], dim=-1)
    g = F.linear(g, sd["combine.weight"], sd["combine.bias"])
    half = DSED // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([args.sin(), args.cos()], dim=-1)
    emb = F.linear(emb, sd["diffusion_step_encoder.1.weight"], sd["diffusion_step_encoder.1.bias"])
    emb = F.linear(F.mish(emb), sd["diffusion_step_encoder.3.weight"], sd["diffusion_step_encoder.3.bias"])
    feature = torch.cat([emb, g], dim=-1)

    h, skips = x.moveaxis(-1, -2), []
    for i in range(len(DOWN_DIMS)):
        h = res_block(f"down_modules.{i}.1", res_block(f"down_modules.{i}.0", h, feature), feature)
        skips.append(h)
        if f"down_modules.{i}.2.conv.weight" in sd:
            h = F.conv1d(h, sd[f"down_modules.{i}.2.conv.weight"], sd[f"down_modules.{i}.2.conv.bias"], 2, 1)
    for i in range(2):
        h = res_block(f"mid_modules.{i}", h, feature)
    for i in range(len(DOWN_DIMS) - 1):
        h = torch.cat([h, skips.pop()], dim=1)
        h = res_block(f"up_modules.{i}.1", res_block(f"up_modules.{i}.0", h, feature), feature)
        h = F.conv_transpose1d(h, sd[f"up_modules.{i}.2.conv.weight"], sd[f"up_modules.{i}.2.conv.bias"], 2, 1)
    h = conv_block("final_conv.0", h)
    h = F.conv1d(h, sd["final_conv.1.weight"], sd["final_conv.1.bias"])
    return h.moveaxis(-1, -2)


@pytest.mark.parametrize("state_dim", [STATE, 0])
def test_reference_state_dict_loads_strictly(state_dim: int) -> None:
    head = unet(state_dim=state_dim)
    reference = reference_state_dict(seed=1, state_dim=state_dim)
    own = head.state_dict()
    assert sorted(own) == sorted(reference)  # no missing, no unexpected keys
    wrong = {k: (tuple(own[k].shape), tuple(v.shape)) for k, v in reference.items() if own[k].shape != v.shape}
    assert wrong == {}
    result = head.load_state_dict(reference, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for name, value in head.state_dict().items():
        assert torch.equal(value, reference[name]), name


@pytest.mark.parametrize("state_dim", [STATE, 0])
def test_loaded_head_computes_the_reference_function(state_dim: int) -> None:
    """Same weights, same inputs -> the reference's noise prediction (horizon 8: no internal padding)."""
    head = unet(state_dim=state_dim)
    reference = reference_state_dict(seed=2, state_dim=state_dim)
    head.load_state_dict(reference, strict=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, ACT, generator=gen)
    cond = torch.randn(3, 1, COND, generator=gen)
    states = torch.randn(3, state_dim, generator=gen) if state_dim else None
    t = torch.tensor([0, 37, 99])
    with torch.no_grad():
        ours = head.model_forward(x, t, cond, states)
        expected = reference_noise_pred(reference, x, t, cond, states)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    # The comparison is not vacuous: the prediction depends on the timestep and the condition.
    with torch.no_grad():
        assert not torch.allclose(head.model_forward(x, t + 1, cond, states), ours)
        # (A shifted condition would not do: norm_after_pool removes the mean.)
        assert not torch.allclose(head.model_forward(x, t, cond.flip(-1), states), ours, atol=1e-4)


def test_loaded_head_trains_and_samples() -> None:
    head = unet(prediction_horizon=13)  # horizon not a multiple of 4: padded inside, cropped back
    head.load_state_dict(reference_state_dict(seed=3), strict=True)
    gen = torch.Generator().manual_seed(0)
    cond, states = torch.randn(2, 3, COND, generator=gen), torch.randn(2, STATE, generator=gen)
    actions = torch.rand(2, 13, ACT, generator=gen) * 2 - 1
    loss = head(actions=actions, hidden_states=cond, states=states, generator=torch.Generator().manual_seed(1)).loss
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert head.norm_after_pool.weight.grad is not None and head.combine.weight.grad.abs().sum() > 0
    sampled = head(hidden_states=cond, states=states, generator=torch.Generator().manual_seed(2)).actions
    assert sampled.shape == (2, 13, ACT) and sampled.dtype == torch.float32 and torch.isfinite(sampled).all()
    assert sampled.abs().max() <= 1.0  # DDIM clips the predicted clean sample to [-1, 1]


def test_timestep_embedding_is_chis() -> None:
    """Sines first, frequencies from 1 down to 1e-4 (the layout `diffusion_step_encoder.1` was trained on)."""
    embed = unet().diffusion_step_encoder[0]
    t = torch.tensor([0.0, 5.0])
    out = embed(t)
    assert out.shape == (2, DSED) and out.dtype == torch.float32
    half = DSED // 2
    torch.testing.assert_close(out[0], torch.cat([torch.zeros(half), torch.ones(half)]))
    torch.testing.assert_close(out[1, 0], torch.sin(torch.tensor(5.0)))  # highest frequency is 1
    torch.testing.assert_close(out[1, half - 1], torch.sin(torch.tensor(5e-4)))  # lowest is 1e-4
    torch.testing.assert_close(out[1, half], torch.cos(torch.tensor(5.0)))


def test_head_fully_trained_names_exist_in_the_heads() -> None:
    """Each entry of HEAD_FULLY_TRAINED (LoRA on di_head: trained in full) is a module of one of the heads."""
    unet_children = {name for name, _ in unet().named_children()}
    scaledp = ScaleDP(ScaleDPPolicyConfig(model_size="ScaleDP_tiny", cond_dim=COND, state_dim=STATE, action_dim=ACT))
    scaledp_children = {name for name, _ in scaledp.named_children()}
    assert "norm_after_pool" in unet_children and "norm_after_pool" in HEAD_FULLY_TRAINED
    assert {"x_embedder", "cond_obs_emb"} <= scaledp_children
    assert set(HEAD_FULLY_TRAINED) <= unet_children | scaledp_children


@pytest.mark.parametrize("layout", ["reference_ckpt", "vla_safetensors"])
def test_stage1_loader_takes_reference_unet_weights(tmp_path, layout: str) -> None:
    """`load_pretrained_dit` loads reference-named UNet weights: a stage-1 `nets` file or a VLA's `policy_head.*`."""
    reference = reference_state_dict(seed=4)
    if layout == "reference_ckpt":
        path = tmp_path / "policy_last.ckpt"
        nets = {f"policy.noise_pred_net.{k}": v for k, v in reference.items()}
        torch.save({"nets": {"nets": nets}}, path)
    else:
        path = tmp_path / "model.safetensors"
        tensors = {f"policy_head.{k}": v.contiguous() for k, v in reference.items()}
        tensors["model.language_model.embed_tokens.weight"] = torch.zeros(4, 2)
        save_file(tensors, path)
    head = unet()
    report = load_pretrained_dit(head, path)
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.loaded) == sorted(reference)
    for name, value in head.state_dict().items():
        assert torch.equal(value, reference[name]), name
