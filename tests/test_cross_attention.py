"""`cross_attention`: every ScaleDP block also attends to the VLM's token states, so where something sits among the
tokens reaches the head (mean pooling cannot tell one arrangement from another). Off (the reference) changes
nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.test_policy_heads_models import ACT, COND, HORIZON, build, gen, inputs, randomize_zero_init
from tests.test_vla_model import parts  # noqa: F401  (module fixture: tokenizer, processor, episodes)

TOKENS = 6


def _tokens(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, TOKENS, COND, generator=gen(seed))


def _predict(head, tokens: torch.Tensor, mask: torch.Tensor | None = None, seed: int = 3) -> torch.Tensor:
    """The chunk `(B, HORIZON, ACT)` for token states `tokens`, the pooled condition their masked mean."""
    batch = tokens.shape[0]
    weights = torch.ones(tokens.shape[:2]) if mask is None else mask.float()
    pooled = (tokens * weights.unsqueeze(-1)).sum(1, keepdim=True) / weights.sum(1).view(-1, 1, 1)
    states = torch.randn(batch, 5, generator=gen(1))
    noise = torch.randn(batch, HORIZON, ACT, generator=gen(seed))
    extra = {} if not head.config.cross_attention else {"condition_tokens": tokens, "condition_token_mask": mask}
    return head.eval()(hidden_states=pooled, states=states, noise=noise, **extra).actions


def test_where_a_token_sits_reaches_the_head_only_with_cross_attention() -> None:
    tokens = _tokens(2)
    swapped = tokens.clone()
    swapped[:, [1, 4]] = tokens[:, [4, 1]]  # the same tokens, two of them at each other's place
    pooled_head = build("scaledp")
    randomize_zero_init(pooled_head)
    reference = _predict(pooled_head, tokens)
    torch.testing.assert_close(_predict(pooled_head, swapped), reference, rtol=1e-4, atol=1e-4)  # blind to the order
    head = build("scaledp", cross_attention=True, max_condition_tokens=8)
    randomize_zero_init(head)
    assert (_predict(head, swapped) - _predict(head, tokens)).abs().max() > 1e-2


def test_cross_attention_starts_as_the_pooled_head() -> None:
    """Zero-initialised read-out: the new branch adds nothing until it learns, so the head behaves as the reference's
    (with the same shared weights) at step 0."""
    plain = build("scaledp")
    head = build("scaledp", cross_attention=True, max_condition_tokens=8)
    missing = head.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("token_embedder.") or ".cross_attn." in k for k in missing)
    for module in head.modules():  # only the branch's read-out is zero: the branch's other layers can learn at once
        if module.__class__.__name__ == "ScaleDPCrossAttention":
            assert torch.count_nonzero(module.proj.weight) == 0 and torch.count_nonzero(module.q.weight) > 0
    with torch.no_grad():  # adaLN gates non-zero so the blocks do something; the cross-attention read-out stays zero
        for block in [*plain.blocks, *head.blocks]:
            block.adaLN_modulation[-1].weight.copy_(torch.randn(block.adaLN_modulation[-1].weight.shape, generator=gen(5)))
        for layer in (plain.final_layer.linear, head.final_layer.linear):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen(6)))
    tokens = _tokens(3)
    torch.testing.assert_close(_predict(head, tokens), _predict(plain, tokens))


def test_padding_side_and_padded_content_do_not_matter() -> None:
    head = build("scaledp", cross_attention=True, max_condition_tokens=8)
    randomize_zero_init(head)
    real = _tokens(1)
    pad = torch.full((1, 2, COND), 7.0)
    left = torch.cat([pad, real], dim=1)
    right = torch.cat([real, -pad], dim=1)
    left_mask = torch.tensor([[False, False] + [True] * TOKENS])
    right_mask = torch.tensor([[True] * TOKENS + [False, False]])
    alone = _predict(head, real)
    torch.testing.assert_close(_predict(head, left, left_mask), alone)
    torch.testing.assert_close(_predict(head, right, right_mask), alone)


def test_training_loss_reaches_the_branch_and_inputs_are_checked() -> None:
    head = build("scaledp", cross_attention=True, max_condition_tokens=8, noise_samples=2).train()
    randomize_zero_init(head)
    batch = inputs(3)
    tokens = _tokens(3)
    mask = torch.ones(3, TOKENS, dtype=torch.bool)
    mask[0, :2] = False  # tiled with the noise draws
    head(**batch, condition_tokens=tokens, condition_token_mask=mask, generator=gen()).loss.backward()
    assert head.token_embedder.proj.weight.grad.abs().sum() > 0
    assert head.blocks[0].cross_attn.kv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="condition_tokens .* are required"):
        head(**batch, generator=gen())
    with pytest.raises(ValueError, match="max_condition_tokens=8"):
        head(**batch, condition_tokens=torch.randn(3, 9, COND), generator=gen())
    with pytest.raises(ValueError, match=rf"expected \(\d+, L, {COND}\)"):
        head(**batch, condition_tokens=torch.randn(3, 4, COND + 1), generator=gen())
    with pytest.raises(ValueError, match="cross_attention=False"):
        build("scaledp")(**batch, condition_tokens=tokens, generator=gen())


def test_config_round_trip_and_checks(tmp_path: Path) -> None:
    from policy_heads import ScaleDP
    from qwen2_vla.arguments import ActionHeadArguments

    build("scaledp").save_pretrained(tmp_path / "plain")
    saved = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert "cross_attention" not in saved and "max_condition_tokens" not in saved  # the reference's config as it was
    head = build("scaledp", cross_attention=True, max_condition_tokens=8)
    randomize_zero_init(head)
    head.save_pretrained(tmp_path / "xattn")
    loaded = ScaleDP.from_pretrained(tmp_path / "xattn")
    assert loaded.config.cross_attention and loaded.config.max_condition_tokens == 8
    for name, value in head.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="max_condition_tokens must be >= 1"):
        build("scaledp", cross_attention=True, max_condition_tokens=0)
    with pytest.raises(ValueError, match="max_condition_tokens=8 with cross_attention=False"):
        build("scaledp", max_condition_tokens=8)
    # A reference head's weights under a cross-attention config: the new weights start as a fresh head's.
    grown = ScaleDP.from_pretrained(tmp_path / "plain", cross_attention=True, max_condition_tokens=8)
    fresh = build("scaledp", cross_attention=True, max_condition_tokens=8)
    assert torch.count_nonzero(grown.blocks[0].cross_attn.proj.weight) == 0
    assert torch.equal(grown.token_embedder.norm.weight, torch.ones(COND))
    position = grown.token_embedder.position.detach()
    assert torch.isfinite(position).all() and 0.01 < float(position.std()) < 0.04  # N(0, 0.02), not left empty
    assert set(grown.state_dict()) == set(fresh.state_dict())
    with pytest.raises(ValueError, match="cross_attention=True is a ScaleDP option"):
        ActionHeadArguments(policy_head_type="unet_diffusion_policy", cross_attention=True)


# ---- inside the VLA ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xattn_vla(tiny_model_dir):
    from transformers import AutoConfig

    from policy_heads import build_policy_head_config
    from qwen2_vla import Qwen2VLAConfig, Qwen2VLAForConditionalGeneration
    from tests.test_vla_model import CHUNK

    base = AutoConfig.from_pretrained(tiny_model_dir)
    head = build_policy_head_config(
        "scale_dp_policy", base.text_config.hidden_size, 14, 14, CHUNK, "ScaleDP_tiny", cross_attention=True
    )
    torch.manual_seed(0)
    model = Qwen2VLAForConditionalGeneration.from_pretrained(
        tiny_model_dir, config=Qwen2VLAConfig.from_qwen2_vl_config(base, head)
    )
    randomize_zero_init(model.policy_head)
    return model


def test_vla_trains_and_predicts_through_the_token_branch(parts, xattn_vla):  # noqa: F811
    from tests.test_vla_model import CHUNK

    tokenizer, _, process, train, collator = parts
    model = xattn_vla.train()
    batch = collator([train[0], train[1]])
    model(**batch).loss.backward()
    assert model.policy_head.token_embedder.proj.weight.grad.abs().sum() > 0  # the token states reach the head
    model.zero_grad()
    model.eval()
    # Left-padded prompts of different lengths, reasoning generated: each row as it would come out alone.
    raw = train.load_raw_step(0, 0)
    prompts = [process.prompt_inputs(raw["images"], text) for text in ("pick", "move both arms to the red square now")]
    noise = torch.randn(1, CHUNK, 14, generator=gen(0)).repeat(2, 1, 1)
    states = torch.zeros(2, 14)

    def run(features, rows):
        inputs_ = collator(features)
        return model.predict_action(
            inputs_["input_ids"], inputs_["attention_mask"], states[rows], inputs_["pixel_values"],
            inputs_["image_grid_thw"], inputs_["mm_token_type_ids"], max_new_tokens=4, noise=noise[rows],
        ).actions

    together = run(prompts, [0, 1])
    for row in range(2):
        torch.testing.assert_close(run([prompts[row]], [row])[0], together[row], rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # without the branch's read-out the chunks change: the tokens reach the head at inference
        for block in model.policy_head.blocks:
            block.cross_attn.proj.weight.zero_()
    assert (run(prompts, [0, 1]) - together).abs().max() > 1e-3


def test_gradient_checkpointing_keeps_the_token_gradients() -> None:
    head = build("scaledp", cross_attention=True, max_condition_tokens=8).train()
    randomize_zero_init(head)
    batch = inputs(2)

    def grads() -> dict[str, torch.Tensor]:
        tokens = _tokens(2).requires_grad_(True)  # the VLM's states: its gradient is what trains the VLM
        head.zero_grad()
        head(**batch, condition_tokens=tokens, generator=gen()).loss.backward()
        return {"tokens": tokens.grad.clone(), **{n: p.grad.clone() for n, p in head.named_parameters()}}

    reference = grads()
    head.activation_checkpointing_enable()
    for name, grad in grads().items():
        torch.testing.assert_close(grad, reference[name], msg=name)
    assert reference["tokens"].abs().sum() > 0


# ---- condition_tokens_from="input_embeddings" ------------------------------------------------------------
@pytest.fixture(scope="module")
def embeddings_vla(tiny_model_dir):
    from transformers import AutoConfig

    from policy_heads import build_policy_head_config
    from qwen2_vla import Qwen2VLAConfig, Qwen2VLAForConditionalGeneration
    from tests.test_vla_model import CHUNK

    base = AutoConfig.from_pretrained(tiny_model_dir)
    head = build_policy_head_config(
        "scale_dp_policy", base.text_config.hidden_size, 14, 14, CHUNK, "ScaleDP_tiny", cross_attention=True,
        condition_tokens_from="input_embeddings",
    )
    torch.manual_seed(0)
    model = Qwen2VLAForConditionalGeneration.from_pretrained(
        tiny_model_dir, config=Qwen2VLAConfig.from_qwen2_vl_config(base, head)
    )
    randomize_zero_init(model.policy_head)
    return model


def _head_tokens(model) -> tuple[list[torch.Tensor], object]:
    """Records the ``condition_tokens`` of every head call (a forward pre-hook); returns the list and the hook."""
    seen: list[torch.Tensor] = []
    hook = model.policy_head.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["condition_tokens"].detach().clone()), with_kwargs=True
    )
    return seen, hook


def _expected_embeddings(model, input_ids: torch.Tensor, pixel_values, image_grid_thw) -> torch.Tensor:
    """The language model's input ``(B, L, H)``: token embeddings, the vision tower's merged patches on image tokens."""
    with torch.no_grad():
        expected = model.get_input_embeddings()(input_ids)
        patches = torch.cat(model.model.get_image_features(pixel_values, image_grid_thw).pooler_output, dim=0)
    image = input_ids == model.config.image_token_id
    expected[image] = patches.to(expected.dtype)
    return expected


def test_head_reads_the_vision_towers_patches_when_told(parts, embeddings_vla):  # noqa: F811
    from tests.test_vla_model import CHUNK

    tokenizer, _, process, train, collator = parts
    model = embeddings_vla.train()
    batch = collator([train[0], train[1]])
    seen, hook = _head_tokens(model)
    try:
        out = model(**batch)
    finally:
        hook.remove()
    expected = _expected_embeddings(model, batch["input_ids"], batch["pixel_values"], batch["image_grid_thw"])
    torch.testing.assert_close(seen[0], expected)
    out.action_loss.backward()  # the action loss alone trains the vision tower through the patches it reads
    assert model.model.visual.merger.mlp[-1].weight.grad.abs().sum() > 0
    model.zero_grad()

    # Inference: generated reasoning (prefill + steps), the same through a second pass, and a fixed answer all hand
    # the head the input embeddings of the whole prompt + answer.
    model.eval()
    raw = train.load_raw_step(0, 0)
    prompts = [process.prompt_inputs(raw["images"], text) for text in ("pick", "move both arms to the red square now")]
    inputs_ = collator(prompts)
    noise = torch.randn(2, CHUNK, 14, generator=gen(0))
    args = (inputs_["input_ids"], inputs_["attention_mask"], torch.zeros(2, 14), inputs_["pixel_values"],
            inputs_["image_grid_thw"], inputs_["mm_token_type_ids"])
    seen, hook = _head_tokens(model)
    try:
        one_pass = model.predict_action(*args, max_new_tokens=4, noise=noise)
        two_pass = model.predict_action(*args, max_new_tokens=4, noise=noise, two_pass=True)
        answer = one_pass.sequences[:, inputs_["input_ids"].shape[1]:]  # the generated answer, given back as fixed
        fixed = model.predict_action(*args, generate_reasoning=False, answer_ids=answer, noise=noise)
    finally:
        hook.remove()
    torch.testing.assert_close(two_pass.actions, one_pass.actions, rtol=1e-4, atol=1e-5)
    expected = _expected_embeddings(model, one_pass.sequences, inputs_["pixel_values"], inputs_["image_grid_thw"])
    assert len(seen) == 3 and torch.equal(fixed.sequences, one_pass.sequences)
    for tokens in seen:
        torch.testing.assert_close(tokens, expected)


def test_condition_tokens_from_needs_the_cross_attention() -> None:
    from qwen2_vla.arguments import ActionHeadArguments

    with pytest.raises(ValueError, match="condition_tokens_from='input_embeddings' with cross_attention=False"):
        build("scaledp", condition_tokens_from="input_embeddings")
    with pytest.raises(ValueError, match="is not one of"):
        build("scaledp", cross_attention=True, condition_tokens_from="layer_3")
    with pytest.raises(ValueError, match="needs cross_attention=True"):
        ActionHeadArguments(condition_tokens_from="input_embeddings")
    assert "condition_tokens_from" not in build("scaledp", cross_attention=True).config.to_dict()  # saved when set


# ---- condition_token_norm -------------------------------------------------------------------------------
def test_token_norm_standardises_each_place_from_the_attended_tokens_only() -> None:
    from policy_heads.conditioning import ConditionTokenNorm

    norm = ConditionTokenNorm(max_tokens=5, dim=3).train()
    tokens = torch.randn(4, 5, 3, generator=gen(0)) * 0.01 + 7.0  # a large shared part, a small varying one
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[[0, 2, 3], :2] = False  # left padded: only row 1 reaches places 3 and 4
    places = (mask.long().cumsum(1) - 1).clamp_min(0)
    padded = tokens.clone()
    padded[0, 0] = float("inf")  # padding must not enter the statistics, even when it is not finite
    padded[0, 1] = 1e6
    out = norm(padded, mask, places)
    # Place 0: the first attended token of each row.
    first = torch.stack([tokens[0, 2], tokens[1, 0], tokens[2, 2], tokens[3, 2]])
    torch.testing.assert_close(norm.running_mean[0], first.mean(0))
    torch.testing.assert_close(norm.running_var[0], first.var(0, unbiased=True))  # unbiased, as batch norm
    # In training a place is standardised with the batch's own statistics (no lag behind a VLM that trains)...
    torch.testing.assert_close(out[[0, 1, 2, 3], [2, 0, 2, 2]].mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    batch_var = first.var(0, unbiased=False)
    torch.testing.assert_close(
        out[[0, 1, 2, 3], [2, 0, 2, 2]].std(0, unbiased=False), (batch_var / (batch_var + norm.eps)).sqrt()
    )
    from_batch = mask & (places < 3)
    assert torch.isfinite(out[mask]).all() and out[from_batch].abs().max() < 5  # the 1e-2 variation is of order one
    # ...but one sample has no variance: places 3 and 4 keep their running statistics (untouched: mean 0, var 1).
    assert norm.batches_tracked.tolist() == [1, 1, 1, 0, 0]
    assert torch.equal(norm.running_var[3:], torch.ones(2, 3)) and torch.equal(norm.running_mean[3:], torch.zeros(2, 3))
    torch.testing.assert_close(out[1, 3:], tokens[1, 3:] / (1 + norm.eps) ** 0.5)
    # A batch of one updates nothing.
    norm(tokens[1:2], mask[1:2], places[1:2])
    assert norm.batches_tracked.tolist() == [1, 1, 1, 0, 0]
    # At inference the statistics stay, so a sample's tokens do not depend on its batch.
    norm.eval()
    alone = norm(padded[1:2], mask[1:2], places[1:2])
    torch.testing.assert_close(alone[0], norm(padded, mask, places)[1])
    assert norm.batches_tracked.tolist() == [1, 1, 1, 0, 0]


def test_token_norm_lets_a_small_change_of_one_token_reach_the_head(tmp_path: Path) -> None:
    from policy_heads import ScaleDP

    # What every sample's token states share (per place and feature, as a VLM's are), and a small varying part.
    tokens = 3.0 * _tokens(1, seed=9) + 0.01 * _tokens(8)
    plain = build("scaledp", cross_attention=True, max_condition_tokens=8)
    normed = build("scaledp", cross_attention=True, max_condition_tokens=8, condition_token_norm=True)
    randomize_zero_init(plain)
    randomize_zero_init(normed)
    normed.train()
    normed(**inputs(8), condition_tokens=tokens, generator=gen())  # the running statistics of these tokens
    moved = tokens.clone()
    moved[:, 3] += 0.01 * torch.randn(8, COND, generator=gen(5))  # one patch changes by a fraction of a percent
    effects = {}
    for name, head in (("plain", plain), ("normed", normed)):
        effects[name] = float((_predict(head, moved) - _predict(head, tokens)).abs().mean())
    assert effects["normed"] > 10 * effects["plain"]
    # The statistics are saved with the head and loaded exactly.
    normed.save_pretrained(tmp_path / "normed")
    loaded = ScaleDP.from_pretrained(tmp_path / "normed")
    assert loaded.config.condition_token_norm
    for name, value in normed.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(_predict(loaded, moved), _predict(normed, moved), rtol=0, atol=0)
    with pytest.raises(ValueError, match="condition_token_norm=True with cross_attention=False"):
        build("scaledp", condition_token_norm=True)
    with pytest.raises(ValueError, match="condition_token_norm=True with noise_samples=2"):
        build("scaledp", cross_attention=True, max_condition_tokens=8, condition_token_norm=True, noise_samples=2)


def test_token_statistics_stay_float32_in_a_bf16_model(tmp_path: Path) -> None:
    from policy_heads import ScaleDP

    head = build("scaledp", cross_attention=True, max_condition_tokens=8, condition_token_norm=True).train()
    head(**inputs(4), condition_tokens=3.0 + 1e-3 * _tokens(4), generator=gen())
    statistics = {k: v.clone() for k, v in head.token_embedder.standardize.state_dict().items()}
    head.to(torch.bfloat16)
    head.save_pretrained(tmp_path / "bf16")
    loaded = ScaleDP.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    assert loaded.x_embedder.weight.dtype == torch.bfloat16  # the rest of the head is cast as asked
    for model in (head, loaded):
        for name, value in model.token_embedder.standardize.state_dict().items():
            torch.testing.assert_close(value, statistics[name], rtol=0, atol=0, msg=name)  # float32, exactly
