"""Precision on the path a real user takes: a bf16 checkpoint at Qwen2-VL-2B's widths (conftest's real-width fixture).

Trained parameters must be float32 master weights whatever the checkpoint's dtype: an AdamW step of 2e-5 on a
weight of 0.02 rounds away in bfloat16 (its spacing there is 1.2e-4). ``--bf16 True`` means autocast.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import train_vla
from qwen2_vla.model_load_utils import load_model
from tests import test_train_vla as shared
from tests.test_train_vla import tiny_argv

tiny_task = shared.tiny_task

LR = 2e-5
# A short run at the reference's learning rate, in mixed precision, on the real-width fixture.
REAL_WIDTH_FLAGS = {"bf16": True, "learning_rate": LR, "max_steps": 1, "save_steps": 10, "weight_decay": 0.0,
                    "per_device_train_batch_size": 1, "adam_epsilon": 1e-8}
LORA_FLAGS = {"lora_enable": True, "freeze_backbone": True, "freeze_vision_tower": True, "lora_module": "vit llm"}


def test_fixture_is_saved_like_the_download(real_width_model_dir: Path) -> None:
    from safetensors import safe_open

    config = json.loads((real_width_model_dir / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    text, vision = config.get("text_config", config), config["vision_config"]
    assert (text["hidden_size"], text["intermediate_size"]) == (1536, 8960)
    assert (text["num_attention_heads"], text["num_key_value_heads"], text["num_hidden_layers"]) == (12, 2, 2)
    assert (vision["embed_dim"], vision["num_heads"], vision["hidden_size"], vision["depth"]) == (1280, 16, 1536, 2)
    with safe_open(real_width_model_dir / "model.safetensors", framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}


def _load(model_dir: Path, output_dir: Path, lines: list[str] | None = None, **flags) -> torch.nn.Module:
    all_config, model_config = train_vla.parse_config(tiny_argv(model_dir, output_dir, **{**REAL_WIDTH_FLAGS, **flags}))
    model, _ = load_model(all_config, model_config, rank0_print=(lines.append if lines is not None else print))
    return model


def _assert_master_weights_fp32(model: torch.nn.Module, frozen_dtype: torch.dtype) -> None:
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable and set(trainable.values()) == {torch.float32}, {n: d for n, d in trainable.items() if d != torch.float32}
    assert not frozen or set(frozen.values()) == {frozen_dtype}


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags",
    [{}, {"freeze_vision_tower": True}, LORA_FLAGS],
    ids=["full", "frozen_vit", "lora"],
)
def test_trainable_parameters_are_float32_from_a_bf16_checkpoint(flags, real_width_model_dir, tiny_task, tmp_path):
    lines: list[str] = []
    model = _load(real_width_model_dir, tmp_path, lines, **flags)
    # Frozen parts are held in the autocast dtype to save memory; the log says which part has which dtype.
    _assert_master_weights_fp32(model, frozen_dtype=torch.bfloat16)
    report = next(line for line in lines if "dtypes:" in line)
    assert "policy_head: trainable float32" in report and "fusion: trainable float32" in report
    assert ("frozen bfloat16" in report.split("vision:")[1].split(";")[0]) == bool(flags)
    if not flags:
        # --bf16 False: nothing is bfloat16 at all (the flag is no longer ignored).
        model = _load(real_width_model_dir, tmp_path, bf16=False, **flags)
        assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.fixture(scope="module")
def bf16_stage2_run(real_width_model_dir, tiny_task, tmp_path_factory):
    """One bf16 training step of full fine-tuning on the real-width model: (weights before, trainer)."""
    output_dir = tmp_path_factory.mktemp("real_width_stage2")
    all_config, model_config = train_vla.parse_config(tiny_argv(real_width_model_dir, output_dir, **REAL_WIDTH_FLAGS))
    parts = train_vla.prepare(all_config, model_config)
    before = {n: p.detach().clone() for n, p in parts["model"].named_parameters() if p.requires_grad}
    trainer = train_vla.train_bc(config=all_config, **parts)
    return before, trainer, output_dir


def _relative_steps(before: dict[str, torch.Tensor], model: torch.nn.Module, name: str) -> torch.Tensor:
    after = dict(model.named_parameters())[name]
    assert after.dtype == torch.float32
    return (after.detach() - before[name]).abs().flatten() / LR


@pytest.mark.slow
def test_bf16_step_moves_small_weights_as_fp32_adamw(bf16_stage2_run):
    before, trainer, _ = bf16_stage2_run
    model = trainer.accelerator.unwrap_model(trainer.model)
    # AdamW's first step moves every weight with a gradient by lr * g / (|g| + eps) ~ lr. Weights of the
    # LLM are ~0.02 and of the new head/fusion smaller: in bf16 such a step rounds to exactly nothing.
    for name in ("model.language_model.layers.0.mlp.down_proj.weight", "model.visual.blocks.0.mlp.fc1.weight"):
        assert before[name].abs().median() < 0.05  # a small weight, where bf16 cannot hold the step
        steps = _relative_steps(before, model, name)
        assert steps.median() == pytest.approx(1.0, abs=0.2), name
        assert (steps == 0).float().mean() < 0.05, name


@pytest.mark.slow
def test_stage3_from_the_bf16_run_trains_in_float32(bf16_stage2_run, tiny_task, tmp_path):
    _, _, stage2_dir = bf16_stage2_run
    all_config, model_config = train_vla.parse_config(
        tiny_argv(stage2_dir, tmp_path, **{**REAL_WIDTH_FLAGS, "load_pretrain": True})
    )
    parts = train_vla.prepare(all_config, model_config)
    _assert_master_weights_fp32(parts["model"], frozen_dtype=torch.bfloat16)
    name = "model.language_model.layers.1.mlp.down_proj.weight"
    before = {name: dict(parts["model"].named_parameters())[name].detach().clone()}
    trainer = train_vla.build_trainer(all_config, **parts)
    trainer.train()
    steps = _relative_steps(before, trainer.accelerator.unwrap_model(trainer.model), name)
    assert steps.median() == pytest.approx(1.0, abs=0.2)


@pytest.mark.slow
def test_lora_steps_move_small_adapter_weights_as_fp32_adamw(real_width_model_dir, tiny_task, tmp_path):
    all_config, model_config = train_vla.parse_config(
        tiny_argv(real_width_model_dir, tmp_path, **{**REAL_WIDTH_FLAGS, **LORA_FLAGS, "max_steps": 2})
    )
    parts = train_vla.prepare(all_config, model_config)
    params = dict(parts["model"].named_parameters())
    # LoRA A starts non-zero (~0.01) but gets no gradient until B has left zero after step 1; at step 2 AdamW
    # (betas 0.9, 0.98) moves it by lr * 0.526 / sqrt(0.505) = 0.74 lr, which would round away on a bf16
    # weight. (B starts at zero, where even bf16 holds a 2e-5 step. The dtype of the fusion and head trained
    # beside the adapters is checked by test_trainable_parameters_are_float32_from_a_bf16_checkpoint.)
    lora_a = next(n for n in params if "language_model.layers.0.mlp.down_proj.lora_A" in n)
    assert params[lora_a].dtype == torch.float32 and 1e-3 < float(params[lora_a].detach().abs().median()) < 0.05
    before = {lora_a: params[lora_a].detach().clone()}
    trainer = train_vla.build_trainer(all_config, **parts)
    trainer.train()
    steps = _relative_steps(before, trainer.accelerator.unwrap_model(trainer.model), lora_a)
    assert steps.median() == pytest.approx(0.74, abs=0.15)
    assert (steps == 0).float().mean() < 0.05
    base_name = lora_a.replace("lora_A.default.weight", "base_layer.weight")
    assert params[base_name].dtype == torch.bfloat16 and not params[base_name].requires_grad


@pytest.mark.slow
def test_token_cross_attention_and_sample_prediction_under_bf16_autocast(real_width_model_dir, tiny_task, tmp_path):
    """The head options at Qwen2-VL-2B's width: the VLM hands the head bf16 states under autocast; the head's
    trainable weights stay float32, gradients reach them finite, and sampling returns float32 actions."""
    model = _load(
        real_width_model_dir, tmp_path, cross_attention=True, prediction_type="sample",
        condition_tokens_from="input_embeddings", condition_token_norm=True,
    )
    from tests.test_policy_heads_models import randomize_zero_init

    head = model.policy_head
    assert head.config.cond_dim == 1536 and head.config.prediction_type == "sample"
    _assert_master_weights_fp32(head, frozen_dtype=torch.bfloat16)
    # The token statistics of a head built beside a bf16 checkpoint: float32, or a 1e-3 variation rounds away.
    standardize = head.token_embedder.standardize
    assert standardize.running_mean.dtype == standardize.running_var.dtype == torch.float32
    randomize_zero_init(head)  # off the adaLN-Zero start, so the gradient reaches the token branch
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 40, 1536, generator=generator).to(torch.bfloat16)  # what the autocast VLM returns
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, :7] = False  # left padding
    chunk = head.config.prediction_horizon
    inputs = {"hidden_states": tokens.mean(1, keepdim=True), "states": torch.randn(2, head.config.state_dim),
              "condition_tokens": tokens, "condition_token_mask": mask}
    head.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(actions=torch.rand(2, chunk, head.config.action_dim) * 2 - 1, **inputs, generator=generator).loss
    loss.backward()
    grad = head.token_embedder.proj.weight.grad
    assert torch.isfinite(loss) and grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.isfinite(standardize.running_var).all() and int(standardize.batches_tracked[0]) >= 1
    head.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actions = head(**inputs, generator=generator).actions
    assert actions.dtype == torch.float32 and torch.isfinite(actions).all() and actions.abs().max() <= 1.0
