"""The VLA on each backbone (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): one code path, from stock tiny checkpoints.

Every test runs once per backbone (conftest's ``tiny_backbone_dir``); a module-scoped run of ``train_vla`` per
backbone is shared by the training, saving and resuming tests, and an untrained checkpoint whose head is off its
zero start by the inference tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

import qwen2_vla
import train_vla
from aloha_scripts.constants import TASK_CONFIGS
from data_utils.hdf5_io import find_all_hdf5
from evaluate.policy import DexVLAPolicy
from qwen2_vla.model_load_utils import LANGUAGE_PREFIX, VISION_PREFIX, from_pretrained_vla, load_model
from tests.conftest import CAMERAS, EVAL_CHUNK, _train_tiny_run
from tests.test_eval_policy import observation
from tests.test_train_vla import TASK, tiny_argv, tiny_task_config, train_logs

transformers.logging.set_verbosity_error()

# Stock model_type -> (VLA config class, VLA model class, stock model class, stock processor class name).
EXPECTED = {
    "qwen2_vl": (
        qwen2_vla.Qwen2VLAConfig, qwen2_vla.Qwen2VLAForConditionalGeneration,
        transformers.Qwen2VLForConditionalGeneration, "Qwen2VLProcessor",
    ),
    "qwen2_5_vl": (
        qwen2_vla.Qwen2_5_VLAConfig, qwen2_vla.Qwen2_5_VLAForConditionalGeneration,
        transformers.Qwen2_5_VLForConditionalGeneration, "Qwen2_5_VLProcessor",
    ),
    "qwen3_vl": (
        qwen2_vla.Qwen3VLAConfig, qwen2_vla.Qwen3VLAForConditionalGeneration,
        transformers.Qwen3VLForConditionalGeneration, "Qwen3VLProcessor",
    ),
}


def backbone_of(model_dir: Path) -> str:
    return AutoConfig.from_pretrained(model_dir).model_type


def assert_state_dicts_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)


@pytest.fixture(scope="module")
def task(episodes_dir: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TASK_CONFIGS, TASK, tiny_task_config(episodes_dir))
        yield TASK


@pytest.fixture(scope="module")
def trained(tiny_backbone_dir: Path, episodes_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 2-step full fine-tuning run (with reasoning) saving ``checkpoint-1`` and ``checkpoint-2``."""
    out = tmp_path_factory.mktemp(f"train_{backbone_of(tiny_backbone_dir)}")
    return _train_tiny_run(tiny_backbone_dir, episodes_dir, out, max_steps=2, save_steps=1)


@pytest.fixture(scope="module")
def eval_ckpt(tiny_backbone_dir: Path, episodes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained VLA checkpoint of the backbone whose head depends on its inputs (``head_init_std``)."""
    from evaluate.testing import build_tiny_checkpoint

    out = tmp_path_factory.mktemp(f"eval_{backbone_of(tiny_backbone_dir)}")
    return build_tiny_checkpoint(out, tiny_backbone_dir, episodes_dir, CAMERAS, EVAL_CHUNK)


@pytest.fixture(scope="module")
def policy(eval_ckpt: Path) -> DexVLAPolicy:
    return DexVLAPolicy(eval_ckpt, device="cpu", max_new_tokens=4, seed=0)


# ---- building the VLA from a stock checkpoint ------------------------------------------------------------------
def test_stock_checkpoint_gives_its_backbones_vla(tiny_backbone_dir: Path, tmp_path: Path, task: str) -> None:
    stock = backbone_of(tiny_backbone_dir)
    config_class, model_class, stock_class, _ = EXPECTED[stock]
    *_, model_config, _ = train_vla.parse_param(tiny_argv(tiny_backbone_dir, tmp_path / "run"))
    assert type(model_config) is config_class and config_class.backbone_model_type == stock
    assert qwen2_vla.vla_model_class(model_config) is model_class and issubclass(model_class, stock_class)
    # The backbone's own widths, processor-facing token ids and vision config travel unchanged.
    base = AutoConfig.from_pretrained(tiny_backbone_dir)
    assert model_config.text_config.to_dict() == base.text_config.to_dict()
    assert model_config.vision_config.to_dict() == base.vision_config.to_dict()
    assert model_config.image_token_id == base.image_token_id
    # A VLA checkpoint names its own model type and loads through the Auto classes into the same class.
    torch.manual_seed(0)
    model = model_class.from_pretrained(tiny_backbone_dir, config=model_config)
    model.save_pretrained(tmp_path / "vla")
    assert json.loads((tmp_path / "vla" / "config.json").read_text())["model_type"] == config_class.model_type
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "vla")
    assert type(reloaded) is model_class
    assert_state_dicts_equal(reloaded.state_dict(), model.state_dict())
    # The stock weights are the backbone's (the checkpoint's key layout was converted where it needed to be).
    stock_model = stock_class.from_pretrained(tiny_backbone_dir)
    stock_weights = stock_model.state_dict()
    assert_state_dicts_equal({k: v for k, v in model.state_dict().items() if k in stock_weights}, stock_weights)


def test_unsupported_model_type_is_a_clear_error(tmp_path: Path, task: str) -> None:
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config.save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match=r"qwen2_vl / qwen2_5_vl / qwen3_vl.*model_type='llama'"):
        train_vla.parse_param(tiny_argv(tmp_path / "llama", tmp_path / "run"))


# ---- training, saving, resuming -----------------------------------------------------------------------------
def test_training_runs_and_saves_a_checkpoint_that_reloads_exactly(tiny_backbone_dir: Path, trained) -> None:
    stock = backbone_of(tiny_backbone_dir)
    config_class, model_class, _, processor_class = EXPECTED[stock]
    assert type(trained.model) is model_class and trained.state.global_step == 2
    logs = train_logs(trained)
    assert [entry["step"] for entry in logs] == [1, 2]
    assert all(np.isfinite([e["loss"], e["llm_loss"], e["action_loss"]]).all() for e in logs)
    out = Path(trained.args.output_dir)
    reloaded = from_pretrained_vla(out)
    assert type(reloaded) is model_class and type(reloaded.config) is config_class
    assert_state_dicts_equal(reloaded.state_dict(), trained.model.state_dict())
    # The processor (and with it the chat template and image sizes) is the checkpoint's own.
    processor, stock_processor = AutoProcessor.from_pretrained(out), AutoProcessor.from_pretrained(tiny_backbone_dir)
    assert type(processor).__name__ == processor_class
    assert processor.chat_template == stock_processor.chat_template
    assert processor.image_processor.patch_size == stock_processor.image_processor.patch_size
    assert processor.image_processor.patch_size == reloaded.config.vision_config.patch_size


def test_resume_continues_exactly(tiny_backbone_dir: Path, episodes_dir: Path, trained, tmp_path: Path) -> None:
    """Resuming from ``checkpoint-1`` gives the uninterrupted run's step-2 weights."""
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(Path(trained.args.output_dir) / "checkpoint-1", out / "checkpoint-1")
    resumed = _train_tiny_run(
        tiny_backbone_dir, episodes_dir, out, max_steps=2, save_steps=1, resume_from_checkpoint=True
    )
    assert resumed.state.global_step == 2
    # The step-1 log comes back from the checkpoint's trainer_state.json; step 2 was trained now, as before.
    assert train_logs(resumed) == train_logs(trained)
    want = load_file(str(Path(trained.args.output_dir) / "checkpoint-2" / "model.safetensors"))
    assert_state_dicts_equal(load_file(str(out / "checkpoint-2" / "model.safetensors")), want)


# ---- LoRA and freezing ----------------------------------------------------------------------------------------
class TrainableAtStart(transformers.TrainerCallback):
    """Records ``{parameter name: requires_grad}`` of the (PEFT base) model as training starts."""

    def __init__(self) -> None:
        self.trainable: dict[str, bool] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.trainable = {name: param.requires_grad for name, param in base.named_parameters()}


def test_lora_finds_vit_and_llm_layers_and_merges(tiny_backbone_dir: Path, episodes_dir: Path, tmp_path: Path) -> None:
    at_start = TrainableAtStart()
    run = _train_tiny_run(
        tiny_backbone_dir, episodes_dir, tmp_path / "lora", callbacks=[at_start], max_steps=1, save_steps=1,
        lora_enable=True, lora_module="vit llm", lora_r=4, lora_alpha=8, freeze_backbone=True,
        freeze_vision_tower=True,
    )
    lora = [name for name in at_start.trainable if ".lora_A." in name]
    assert any(n.startswith(VISION_PREFIX) for n in lora) and any(n.startswith(LANGUAGE_PREFIX) for n in lora)
    assert all(n.startswith((VISION_PREFIX, LANGUAGE_PREFIX)) for n in lora)
    for name, trainable in at_start.trainable.items():
        if name.startswith((VISION_PREFIX, LANGUAGE_PREFIX, "lm_head")):
            assert trainable == ("lora_" in name), name
    # The saved adapter carries both parts' LoRA weights.
    saved = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    assert any(".visual." in k and "lora_A" in k for k in saved) and any(
        ".language_model." in k and "lora_A" in k for k in saved
    )
    merged = from_pretrained_vla(tmp_path / "lora" / train_vla.MERGED_DIR_NAME)
    assert type(merged) is EXPECTED[backbone_of(tiny_backbone_dir)][1]
    # The trainer's model was merged in place by the export: the export holds exactly its weights.
    assert_state_dicts_equal(merged.state_dict(), run.model.get_base_model().state_dict())


@pytest.mark.parametrize(
    ("flags", "vision", "language"),
    [({"freeze_vision_tower": True}, False, True), ({"freeze_backbone": True}, True, False)],
)
def test_freeze_flags_freeze_the_backbones_parts(
    tiny_backbone_dir: Path, tmp_path: Path, task: str, flags: dict, vision: bool, language: bool
) -> None:
    all_config, model_config = train_vla.parse_config(tiny_argv(tiny_backbone_dir, tmp_path / "run", **flags))
    model, _ = load_model(all_config, model_config, rank0_print=lambda *a: None)
    seen = {"vision": 0, "language": 0}
    for name, param in model.named_parameters():
        if name.startswith(VISION_PREFIX):
            seen["vision"] += 1
            assert param.requires_grad == vision, name
        elif name.startswith((LANGUAGE_PREFIX, "lm_head")):
            seen["language"] += 1
            assert param.requires_grad == language, name
        else:
            assert name.startswith(("policy_head.", "fusion.")) and param.requires_grad, name
    assert seen["vision"] and seen["language"]


# ---- inference --------------------------------------------------------------------------------------------------
def test_predict_action_with_and_without_reasoning(policy: DexVLAPolicy, episodes_dir: Path) -> None:
    path = find_all_hdf5(episodes_dir)[0]
    prepared = [policy.prepare(observation(path, t)) for t in (2, 17)]
    batch = policy.collator([p.features for p in prepared])
    states = torch.as_tensor(policy.stats.normalize_state(np.stack([p.state for p in prepared])), dtype=torch.float32)
    noise = policy.noise(2)
    kwargs = dict(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], states=states,
        pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
        mm_token_type_ids=batch["mm_token_type_ids"], noise=noise, tokenizer=policy.tokenizer,
    )
    model = policy.model
    with torch.no_grad():
        one_pass = model.predict_action(**kwargs, max_new_tokens=4)
        two_pass = model.predict_action(**kwargs, max_new_tokens=4, two_pass=True)
        fixed = model.predict_action(**kwargs, generate_reasoning=False, answer_ids=policy.fixed_answer_ids)
    for out in (one_pass, fixed):
        assert out.actions.shape == (2, EVAL_CHUNK, 14) and torch.isfinite(out.actions).all()
    assert one_pass.answer_mask[:, batch["input_ids"].shape[1]:].any()
    # The one-pass states (generate()'s own, plus one cached step at the next rope position) are the second pass's.
    torch.testing.assert_close(one_pass.actions, two_pass.actions, rtol=1e-4, atol=1e-5)
    # Same noise for both rows: different observations must still give different actions.
    assert not torch.allclose(fixed.actions[0], fixed.actions[1])


def test_policy_server_infers(policy: DexVLAPolicy, episodes_dir: Path) -> None:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from tests.test_serve_policy import start

    obs = observation(find_all_hdf5(episodes_dir)[0], 5)
    local = policy.infer(obs)
    assert local["actions"].shape == (EVAL_CHUNK, 14) and np.isfinite(local["actions"]).all()
    server, thread = start(policy)
    try:
        client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
        remote = client.infer(obs)
    finally:
        server.shutdown()
        thread.join(timeout=10)
    np.testing.assert_array_equal(remote["actions"], local["actions"])
    assert remote["reasoning"] == local["reasoning"]
