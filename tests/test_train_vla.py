"""train_vla.py end to end on the tiny offline model: arguments, scripts, stage 2 -> stage 3 -> reload."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoProcessor

import train_vla
from aloha_scripts.constants import TASK_CONFIGS
from data_utils.normalization import STATS_FILE_NAME, NormStats
from qwen2_vla import Qwen2VLAConfig, Qwen2VLAForConditionalGeneration
from qwen2_vla.arguments import ActionHeadArguments, DataArguments, ModelArguments, TrainingArguments
from qwen2_vla.model_load_utils import from_pretrained_vla
from qwen2_vla.trainer import STAGING_PREFIX
from tests.conftest import CAMERAS

REPO_ROOT = Path(__file__).resolve().parent.parent
TASK = "pytest_tiny"
# What inference needs from a checkpoint, and what resuming needs on top.
MODEL_FILES = {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "processor_config.json",
    STATS_FILE_NAME,
}
RESUME_FILES = {"trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"}


# ---- helpers shared with the other training tests (the tiny model: conftest's tiny_model_dir) -------


def tiny_task_config(episodes_dir: Path) -> dict:
    """The ``TASK_CONFIGS`` entry of the test task over ``episodes_dir`` (conftest's 30-step episodes)."""
    return {"dataset_dir": [str(episodes_dir)], "episode_len": 30, "camera_names": CAMERAS}


@pytest.fixture(scope="module")
def tiny_task(episodes_dir: Path):
    """A task over the session's generated episodes (4 episodes of 30 steps, 56x56 images)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TASK_CONFIGS, TASK, tiny_task_config(episodes_dir))
        yield TASK


def tiny_argv(model_dir: str | Path, output_dir: str | Path, **overrides) -> list[str]:
    """Command line of a few-step CPU run on the tiny model; ``None`` drops a flag."""
    args = {
        "model_name_or_path": model_dir,
        "task_name": TASK,
        "output_dir": output_dir,
        "use_cpu": True,
        "use_reasoning": True,
        "state_dim": 14,
        "action_dim": 14,
        "chunk_size": 8,
        "policy_head_type": "scale_dp_policy",
        "policy_head_size": "ScaleDP_tiny",
        "image_size_stable": "(56,56)",
        "image_size_wrist": "(56,56)",
        "per_device_train_batch_size": 2,
        "max_steps": 4,
        "logging_steps": 1,
        "save_steps": 2,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
        "report_to": "none",
        "augment_images": False,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "seed": 0,
    }
    args.update(overrides)
    argv: list[str] = []
    for key, value in args.items():
        if value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def train_logs(trainer_or_history) -> list[dict]:
    """The per-step training logs (those with a ``loss``) of a trainer or a ``log_history`` list."""
    history = getattr(getattr(trainer_or_history, "state", None), "log_history", trainer_or_history)
    return [entry for entry in history if "loss" in entry]


# ---- arguments ------------------------------------------------------------------------------------
def _parser() -> transformers.HfArgumentParser:
    return transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, ActionHeadArguments))


def _script_argv(script: str, tmp_path: Path, **extra_env: str) -> list[str]:
    """Run a GPU script with a fake `deepspeed` launcher; return the arguments it gives train_vla.py."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "deepspeed"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "MNOP": "/path/to/model",
        "DIT_PRETRAIN": "/path/to/dit.ckpt",
        "OUTPUT": str(tmp_path / "out"),
        **extra_env,
    }
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / script), "--use_cpu", "True"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    launched = json.loads(done.stdout.strip().splitlines()[-1])
    return launched[launched.index("./train_vla.py") + 1 :]


@pytest.mark.parametrize("script", ["train_dexvla_stage2.sh", "train_dexvla_stage3.sh"])
def test_reference_scripts_accept_the_unet_head(script: str, tmp_path: Path, monkeypatch) -> None:
    argv = _script_argv(script, tmp_path, ACTION_HEAD="unet_diffusion_policy")
    monkeypatch.chdir(REPO_ROOT)
    model_args, _, _, head_args = _parser().parse_args_into_dataclasses(args=argv)
    assert head_args.policy_head_type == "unet_diffusion_policy" and head_args.policy_head_size is None
    assert not model_args.load_pretrain_dit


@pytest.mark.parametrize(
    "script", ["train_dexvla_stage2.sh", "train_dexvla_stage3.sh", "train_divla.sh"], ids=lambda s: s[:-3]
)
def test_reference_scripts_parse(script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each GPU script, run with a fake `deepspeed` launcher, passes flags train_vla.py accepts."""
    argv = _script_argv(script, tmp_path)
    monkeypatch.chdir(REPO_ROOT)  # --deepspeed scripts/zero2.json is relative to the repository
    model_args, data_args, training_args, head_args = _parser().parse_args_into_dataclasses(args=argv)
    assert model_args.model_name_or_path == "/path/to/model"
    assert training_args.deepspeed == "scripts/zero2.json"
    assert training_args.tf32 is False or torch.cuda.is_available()  # --tf32 True degrades on CPU
    assert training_args.per_device_train_batch_size == 12 and training_args.learning_rate == 2e-5
    assert training_args.gradient_checkpointing and data_args.use_reasoning
    assert training_args.logging_dir == str(tmp_path / "out" / "log")
    if script == "train_divla.sh":
        assert head_args.policy_head_type == "unet_diffusion_policy" and head_args.policy_head_size is None
        assert training_args.lora_enable and training_args.non_lora_lr == 2e-4 and data_args.chunk_size == 16
        assert training_args.freeze_backbone and training_args.freeze_vision_tower
    else:
        assert head_args.policy_head_size == "ScaleDP_H" and data_args.chunk_size == 50
        assert not training_args.lora_enable
    if script == "train_dexvla_stage2.sh":
        assert model_args.load_pretrain_dit and model_args.pretrain_dit_path == "/path/to/dit.ckpt"
        assert training_args.lr_scheduler_type == "constant" and training_args.warmup_steps == 0.01
    if script == "train_dexvla_stage3.sh":
        assert training_args.load_pretrain and training_args.lr_scheduler_type == "cosine"
        assert training_args.lora_modules == ["vit", "llm"]


@pytest.mark.parametrize(
    ("cls", "kwargs", "names"),
    [
        (
            ActionHeadArguments,
            {"policy_head_type": "unet_diffusion_policy", "policy_head_size": "ScaleDP_H"},
            ["policy_head_size", "policy_head_type"],
        ),
        (ActionHeadArguments, {"policy_head_size": "ScaleDP_XXL"}, ["policy_head_size"]),
        (ActionHeadArguments, {"policy_head_type": "mlp"}, ["policy_head_type"]),
        (DataArguments, {"chunk_size": 0}, ["chunk_size"]),
        (DataArguments, {"image_size_stable": "480"}, ["image_size_stable"]),
        (ModelArguments, {"load_pretrain_dit": True}, ["load_pretrain_dit", "pretrain_dit_path"]),
        (TrainingArguments, {"lora_module": "vit decoder"}, ["lora_module"]),
        (TrainingArguments, {"non_lora_lr": 1e-4}, ["non_lora_lr", "lora_enable"]),
        (TrainingArguments, {"lora_enable": True}, ["lora_enable", "freeze_backbone", "freeze_vision_tower"]),
        (TrainingArguments, {"warmup_ratio": 0.1, "warmup_steps": 5}, ["warmup_ratio", "warmup_steps"]),
        (TrainingArguments, {"bits": 3}, ["bits"]),
        (TrainingArguments, {"bits": 4}, ["bits", "lora_enable"]),
        (TrainingArguments, {"lora_weight_path": "/x"}, ["lora_weight_path"]),
        (DataArguments, {"history_images_length": 2}, ["history_images_length"]),
        (TrainingArguments, {"using_ema": True, "ema_decay": 1.5}, ["using_ema", "ema_decay"]),
    ],
)
def test_bad_argument_combinations_name_their_fields(cls, kwargs, names, tmp_path: Path) -> None:
    if cls is TrainingArguments:
        kwargs = {"output_dir": str(tmp_path), "use_cpu": True, **kwargs}
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    for name in names:
        assert name in str(err.value)


def test_defaults_follow_the_reference(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, tf32=True)
    assert args.tf32 is False or torch.cuda.is_available()
    assert (args.optim, args.adam_beta2, args.adam_epsilon) == ("adamw_torch", 0.98, 1e-7)
    assert (args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_bias) == (64, 256, 0.05, "none")
    assert args.lora_modules == ["vit", "llm"] and args.bits == 16 and not args.remove_unused_columns
    assert ActionHeadArguments().policy_head_size == "ScaleDP_H"
    assert ActionHeadArguments(policy_head_type="unet_diffusion_policy").policy_head_size is None
    assert ModelArguments().using_film and DataArguments().augment_images is None


def test_parse_param_stock_model_and_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    *_, config, _ = train_vla.parse_param(tiny_argv(tiny_model_dir, tmp_path / "a", llm_loss_weight=0.5))
    assert isinstance(config, Qwen2VLAConfig)
    head = config.policy_head_config
    assert head.cond_dim == config.text_config.hidden_size
    assert (head.prediction_horizon, head.state_dim, head.action_dim) == (8, 14, 14)
    assert config.llm_loss_weight == 0.5 and config.using_film
    assert (config.image_size_stable, config.image_size_wrist) == ("(56,56)", "(56,56)")
    assert config.use_reasoning is True

    # A VLA checkpoint keeps its head; arguments that contradict it are rejected by name.
    checkpoint = tmp_path / "vla"
    config.save_pretrained(checkpoint)
    *_, again, _ = train_vla.parse_param(tiny_argv(checkpoint, tmp_path / "b", load_pretrain=True))
    assert again.policy_head_config.to_dict() == head.to_dict()
    with pytest.raises(ValueError, match="chunk_size"):
        train_vla.parse_param(tiny_argv(checkpoint, tmp_path / "c", chunk_size=16))
    with pytest.raises(ValueError, match=r"--state_dropout 1.0 \(checkpoint: 0.0\)"):
        train_vla.parse_param(tiny_argv(checkpoint, tmp_path / "s", load_pretrain=True, state_dropout=1.0))
    with pytest.raises(ValueError, match="load_pretrain"):
        train_vla.parse_param(tiny_argv(tiny_model_dir, tmp_path / "d", load_pretrain=True))
    with pytest.raises(ValueError, match="load_pretrain_dit=True would overwrite the trained policy head"):
        train_vla.parse_param(
            tiny_argv(checkpoint, tmp_path / "e", load_pretrain_dit=True, pretrain_dit_path=str(tmp_path / "dit"))
        )


# ---- stage 2 -> stage 3 -> reload --------------------------------------------------------------------
def _assert_same_weights(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(reference)
    for name, value in reference.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_stage2_then_stage3_full_and_lora_then_reload(tiny_model_dir: Path, tiny_task: str, tmp_path: Path) -> None:
    stage2 = tmp_path / "stage2"
    trainer2 = train_vla.run(tiny_argv(tiny_model_dir, stage2, max_steps=4, save_steps=2, save_total_limit=1))
    assert trainer2.state.global_step == 4
    # save_total_limit=1 keeps the newest checkpoint; the atomic save leaves no staging directory behind.
    assert sorted(p.name for p in stage2.iterdir() if p.is_dir()) == ["checkpoint-4"]
    checkpoint = stage2 / "checkpoint-4"
    assert MODEL_FILES | RESUME_FILES <= {p.name for p in checkpoint.iterdir()}
    assert MODEL_FILES <= {p.name for p in stage2.iterdir()}
    assert not list(stage2.glob(f"{STAGING_PREFIX}*"))
    logs = train_logs(trainer2)
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4]
    assert all({"llm_loss", "action_loss"} <= set(entry) for entry in logs)

    # Stage 3, full fine-tuning from the stage-2 checkpoint.
    stage3 = tmp_path / "stage3"
    # One warm-up step: the first optimizer step has lr 0, so checkpoint-1 holds exactly what stage 3 loaded.
    trainer3 = train_vla.run(
        tiny_argv(
            checkpoint,
            stage3,
            load_pretrain=True,
            max_steps=2,
            save_steps=1,
            lr_scheduler_type="cosine",
            warmup_ratio=0.5,
        )
    )
    reloaded = Qwen2VLAForConditionalGeneration.from_pretrained(stage3)
    _assert_same_weights(reloaded, trainer3.model.state_dict())
    assert NormStats.load(stage3).to_dict() == trainer3.norm_stats.to_dict()
    stage2_weights = load_file(str(checkpoint / "model.safetensors"))
    stage3_start = load_file(str(stage3 / "checkpoint-1" / "model.safetensors"))
    assert stage2_weights.keys() == stage3_start.keys()
    for name, value in stage2_weights.items():
        torch.testing.assert_close(stage3_start[name], value, rtol=0, atol=0, msg=name)

    # Stage 3 with LoRA: adapter checkpoints, and a merged plain model at the end.
    lora = tmp_path / "stage3_lora"
    trainer_lora = train_vla.run(
        tiny_argv(
            checkpoint,
            lora,
            load_pretrain=True,
            max_steps=2,
            lora_enable=True,
            lora_r=4,
            lora_alpha=8,
            freeze_backbone=True,
            freeze_vision_tower=True,
            non_lora_lr=2e-3,
        )
    )
    merged_dir = lora / train_vla.MERGED_DIR_NAME
    assert MODEL_FILES <= {p.name for p in merged_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", STATS_FILE_NAME} <= {
        p.name for p in (lora / "checkpoint-2").iterdir()
    }
    merged = Qwen2VLAForConditionalGeneration.from_pretrained(merged_dir)
    _assert_same_weights(merged, trainer_lora.model.get_base_model().state_dict())
    # The last adapter checkpoint (same step) loads onto its base and merges to the same model, also
    # after the run directory moved: the adapter names the run's own lora_base by a relative path.
    adapter = json.loads((lora / "checkpoint-2" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "../lora_base"
    moved = tmp_path / "moved_run"
    shutil.copytree(lora / "checkpoint-2", moved / "checkpoint-2")
    shutil.copytree(lora / "lora_base", moved / "lora_base")
    from_adapter = from_pretrained_vla(moved / "checkpoint-2")
    for name, value in merged.state_dict().items():
        torch.testing.assert_close(from_adapter.state_dict()[name], value, msg=name)

    # What evaluation does with a final directory: processor + stats + model, and one forward pass.
    processor = AutoProcessor.from_pretrained(merged_dir)
    assert "<|im_start|>" in processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], tokenize=False
    )
    stats = NormStats.load(merged_dir)
    assert stats.action_dim == 14 and stats.chunk_size == 8
    batch = trainer_lora.data_collator([trainer_lora.train_dataset[0], trainer_lora.train_dataset[1]])
    with torch.no_grad():
        out = merged(**batch)
    assert out.loss is not None and torch.isfinite(out.loss)
    assert out.loss == out.action_loss + merged.config.llm_loss_weight * out.llm_loss
