"""QWen2VLATrainer's hooks: trainable parameters, optimizer groups, component-loss logging, resume, saving."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import train_vla
from data_utils.sampler import EpisodeSampler
from qwen2_vla.ema import EMA_WEIGHTS_NAME
from qwen2_vla.trainer import QWen2VLATrainer, is_lora_parameter, non_lora_module_keywords
from tests import test_train_vla as shared
from tests.conftest import CAMERAS
from tests.test_train_vla import tiny_argv, train_logs

# The test task and the one-thread setting, shared with test_train_vla.py.
tiny_task = shared.tiny_task

VISION, LANGUAGE, HEAD, FUSION = "model.visual.", "model.language_model.", "policy_head.", "fusion."


def make_trainer(model_dir: Path, output_dir: Path, **overrides) -> QWen2VLATrainer:
    """A trainer over the tiny model and the test task, not trained."""
    all_config, model_config = train_vla.parse_config(tiny_argv(model_dir, output_dir, **overrides))
    return train_vla.build_trainer(all_config, **train_vla.prepare(all_config, model_config))


def _part(name: str) -> str:
    """Which part of the VLA a parameter belongs to (PEFT prefixes and wrappers stripped)."""
    name = name.removeprefix("base_model.model.")
    for prefix, part in ((VISION, "vision"), (LANGUAGE, "llm"), (HEAD, "head"), (FUSION, "fusion")):
        if name.startswith(prefix):
            return part
    return "lm_head" if name.startswith("lm_head") else "other"


# ---- what trains ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "full", "frozen"),
    [
        ({}, {"vision", "llm", "lm_head", "head", "fusion"}, set()),
        ({"freeze_vision_tower": True}, {"llm", "lm_head", "head", "fusion"}, {"vision"}),
        # As the reference: a frozen backbone leaves the vision tower to freeze_vision_tower.
        ({"freeze_backbone": True}, {"vision", "head", "fusion"}, {"llm", "lm_head"}),
        ({"freeze_backbone": True, "freeze_vision_tower": True}, {"head", "fusion"}, {"vision", "llm", "lm_head"}),
    ],
    ids=["stage2", "frozen_vit", "frozen_llm", "head_only"],
)
def test_freeze_flags_select_trainable_parts(flags, full, frozen, tiny_model_dir, tiny_task, tmp_path) -> None:
    trainer = make_trainer(tiny_model_dir, tmp_path, **flags)
    by_part: dict[str, set[bool]] = {}
    for name, param in trainer.model.named_parameters():
        by_part.setdefault(_part(name), set()).add(param.requires_grad)
    if trainer.model.config.get_text_config().tie_word_embeddings:
        # lm_head shares the embedding matrix (part of the LLM); named_parameters lists it once.
        full, frozen = full - {"lm_head"}, frozen - {"lm_head"}
    assert "other" not in by_part
    for part in full:
        assert by_part[part] == {True}, part
    for part in frozen:
        assert by_part[part] == {False}, part


@pytest.mark.parametrize("lora_module", ["vit llm", "llm", "vit llm di_head"])
def test_lora_trains_adapters_head_and_fusion_only(lora_module, tiny_model_dir, tiny_task, tmp_path) -> None:
    trainer = make_trainer(
        tiny_model_dir,
        tmp_path,
        lora_enable=True,
        lora_module=lora_module,
        lora_r=4,
        lora_alpha=8,
        freeze_backbone=True,
        freeze_vision_tower=True,
        non_lora_lr=1e-2,
    )
    modules = lora_module.split()
    adapted = {"vit": "vision", "llm": "llm", "di_head": "head"}
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if is_lora_parameter(n)}
    assert {_part(n) for n in lora} == {adapted[m] for m in modules}
    for name in trainable - lora:
        # Besides LoRA only the head and the fusion train (PEFT's trained copies, never the frozen originals).
        assert _part(name) in {"head", "fusion"}, name
        assert "original_module" not in name
    if "di_head" in modules:
        full_head = {n for n in trainable - lora if _part(n) == "head"}
        assert full_head and all(any(k in n for k in ("x_embedder", "cond_obs_emb")) for n in full_head)
    else:
        assert any(_part(n) == "head" for n in trainable - lora)

    # Optimizer: LoRA at the base lr, the non-LoRA modules at non_lora_lr, everything trainable exactly once.
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    grouped = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(trainable)
    keywords = non_lora_module_keywords(trainer.args.lora_modules)
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = names[id(param)]
            special = not is_lora_parameter(name) and any(k in name for k in keywords)
            assert group["lr"] == (1e-2 if special else trainer.args.learning_rate), name
    assert any(group["lr"] == 1e-2 for group in optimizer.param_groups)


def test_optimizer_weight_decay_split(tiny_model_dir, tiny_task, tmp_path) -> None:
    trainer = make_trainer(tiny_model_dir, tmp_path, weight_decay=0.1)
    optimizer = trainer.create_optimizer()
    assert len(optimizer.param_groups) == 2
    assert all(group["lr"] == trainer.args.learning_rate for group in optimizer.param_groups)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    plain = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert all(not n.endswith("bias") and "norm" not in n for n in decayed)
    assert any(n.endswith("bias") for n in plain) and any("norm" in n for n in plain)
    assert decayed | plain == {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert (optimizer.defaults["betas"], optimizer.defaults["eps"]) == ((0.9, 0.98), 1e-7)


def test_train_sampler_is_seeded_episode_sampler(tiny_model_dir, tiny_task, tmp_path) -> None:
    first = make_trainer(tiny_model_dir, tmp_path / "a", seed=3)._get_train_sampler()
    second = make_trainer(tiny_model_dir, tmp_path / "b", seed=3)._get_train_sampler()
    assert isinstance(first, EpisodeSampler) and first.seed == 3
    assert list(first) == list(second)
    first.set_epoch(1)
    assert list(first) != list(second)


# ---- logging ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_component_losses_logged_correctly_under_gradient_accumulation(tiny_model_dir, tiny_task, tmp_path) -> None:
    """GA=2 x batch 2 sees the same samples per step as GA=1 x batch 4 and logs the same component losses."""
    common = dict(max_steps=4, logging_steps=2, save_strategy="no", llm_loss_weight=0.5, report_to="tensorboard")
    accumulated = train_vla.run(
        tiny_argv(
            tiny_model_dir,
            tmp_path / "ga2",
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            logging_dir=str(tmp_path / "tb"),
            **common,
        )
    )
    single = train_vla.run(
        tiny_argv(
            tiny_model_dir, tmp_path / "ga1", per_device_train_batch_size=4, gradient_accumulation_steps=1, **common
        )
    )
    logs_ga2, logs_ga1 = train_logs(accumulated), train_logs(single)
    assert [e["step"] for e in logs_ga2] == [e["step"] for e in logs_ga1] == [2, 4]
    for ga2, ga1 in zip(logs_ga2, logs_ga1, strict=True):
        # The components are averaged exactly like the Trainer's loss (which is divided by GA).
        for logs in (ga2, ga1):
            assert logs["loss"] == pytest.approx(logs["action_loss"] + 0.5 * logs["llm_loss"], rel=1e-5)
        # Same samples and noise; only the token-mean over two half batches differs from one full batch.
        assert ga2["llm_loss"] == pytest.approx(ga1["llm_loss"], rel=0.02)
        assert ga2["action_loss"] == pytest.approx(ga1["action_loss"], rel=0.1)
        assert ga2["loss"] == pytest.approx(ga1["loss"], rel=0.02)

    # TensorBoard got them under --logging_dir, beside the loss.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/llm_loss", "train/action_loss"} <= tags
    assert [s.value for s in events.Scalars("train/llm_loss")] == pytest.approx([e["llm_loss"] for e in logs_ga2])


# ---- resume and saving ------------------------------------------------------------------------------
LORA_FLAGS = dict(
    lora_enable=True, lora_r=4, lora_alpha=8, freeze_backbone=True, freeze_vision_tower=True, non_lora_lr=1e-3
)


@pytest.mark.slow
@pytest.mark.parametrize("flags", [{}, LORA_FLAGS], ids=["full", "lora"])
def test_resume_continues_the_same_run(flags, tiny_model_dir, tiny_task, tmp_path) -> None:
    """Interrupted at step 3 and resumed: steps 4-6 log what the uninterrupted run logged, weights and EMA too."""
    common = dict(
        max_steps=6, save_steps=3, logging_steps=1, lr_scheduler_type="cosine", using_ema=True, ema_decay=0.9, **flags
    )
    full = train_vla.run(tiny_argv(tiny_model_dir, tmp_path / "full", **common))

    # Interrupted after step 3: a copy of the uninterrupted run's checkpoint-3 is all such a run leaves behind.
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-3", interrupted / "checkpoint-3")
    resumed = train_vla.run(tiny_argv(tiny_model_dir, interrupted, resume_from_checkpoint="True", **common))
    assert resumed.state.global_step == 6

    expected = {e["step"]: e for e in train_logs(full)}
    got = {e["step"]: e for e in train_logs(resumed) if e["step"] > 3}
    assert sorted(got) == [4, 5, 6]
    for step, logs in got.items():
        for key in ("loss", "llm_loss", "action_loss", "learning_rate", "grad_norm"):
            assert logs[key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-7), (step, key)
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, msg=name)
    # The EMA continued from the checkpoint's average, not from the resumed weights.
    for name, value in full.ema.shadow.items():
        torch.testing.assert_close(resumed.ema.shadow[name], value, msg=name)


def test_ema_weights_saved_with_checkpoint(full_ema_run) -> None:
    trainer = full_ema_run  # 2 steps, save_steps 2, using_ema (conftest; its checkpoints are also served)
    run_dir = Path(trainer.args.output_dir)
    with safe_open(str(run_dir / "checkpoint-2" / EMA_WEIGHTS_NAME), framework="pt") as f:
        assert set(f.keys()) == {n for n, p in trainer.model.named_parameters() if p.requires_grad}
        assert f.metadata()["num_updates"] == "2"
        name = next(n for n in f.keys() if n.startswith("policy_head.x_embedder"))
        assert not torch.equal(f.get_tensor(name), trainer.model.get_parameter(name).detach())
        ema_value = f.get_tensor(name)
    # The run's end also leaves a loadable model with the averaged weights; training weights are restored.
    ema_model = type(trainer.model).from_pretrained(run_dir / "ema")
    assert torch.equal(ema_model.get_parameter(name).detach(), ema_value)
    assert not torch.equal(trainer.model.get_parameter(name).detach(), ema_value)
    assert (run_dir / "ema" / "dataset_stats.json").exists()


def test_failed_checkpoint_save_leaves_no_checkpoint(tiny_model_dir, tiny_task, tmp_path, monkeypatch) -> None:
    """A crash while writing checkpoint-N must not leave a checkpoint-N that resume would pick."""

    def crash(self, output_dir):
        raise OSError("disk full")

    monkeypatch.setattr(QWen2VLATrainer, "_save_optimizer_and_scheduler", crash)
    with pytest.raises(OSError, match="disk full"):
        train_vla.run(tiny_argv(tiny_model_dir, tmp_path, max_steps=2, save_steps=2))
    assert not (tmp_path / "checkpoint-2").exists()
    monkeypatch.undo()
    # The next save clears the leftover staging directory and publishes the checkpoint.
    train_vla.run(tiny_argv(tiny_model_dir, tmp_path, max_steps=2, save_steps=2))
    assert (tmp_path / "checkpoint-2" / "optimizer.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["checkpoint-2"]


def test_loss_is_finite_and_decreases_over_a_short_run(tiny_model_dir, tiny_task, tmp_path) -> None:
    trainer = train_vla.run(
        tiny_argv(tiny_model_dir, tmp_path, max_steps=30, logging_steps=10, save_strategy="no", learning_rate=3e-3)
    )
    logs = train_logs(trainer)
    assert [e["step"] for e in logs] == [10, 20, 30]
    # The language loss dominates the total: the action loss must fall on its own, by a margin that the
    # noise of 10-step means (random diffusion timesteps) does not reach.
    for key, factor in (("loss", 1.0), ("llm_loss", 1.0), ("action_loss", 0.6)):
        values = [e[key] for e in logs]
        assert all(math.isfinite(x) for x in values) and values[-1] < factor * values[0], (key, values)


def test_resume_on_changed_data_stops_before_touching_the_run(
    full_ema_run, tiny_model_dir, tiny_task, tmp_path
) -> None:
    """Other data under the same output_dir: resuming stops, naming the statistic that moved."""
    from data_utils.normalization import STATS_FILE_NAME, NormStats

    run = tmp_path / "run"
    checkpoint = run / "checkpoint-2"
    shutil.copytree(Path(full_ema_run.args.output_dir) / "checkpoint-2", checkpoint)
    stats = NormStats.load(checkpoint).to_dict()
    stats["action_mean"][3] += 0.5  # what the run was trained on: not today's data
    (checkpoint / STATS_FILE_NAME).write_text(json.dumps(stats))
    (run / STATS_FILE_NAME).write_text(json.dumps(stats))
    run_stats = (run / STATS_FILE_NAME).read_text()
    with pytest.raises(ValueError, match=r"resuming from .*checkpoint-2.* action_mean\[3\]"):
        train_vla.run(tiny_argv(tiny_model_dir, run, max_steps=4, save_steps=2, resume_from_checkpoint="True"))
    assert (run / STATS_FILE_NAME).read_text() == run_stats  # the run's own record was not overwritten
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-2", STATS_FILE_NAME]


def test_resume_stats_check_passes_unchanged_data(full_ema_run, episodes_dir) -> None:
    from data_utils.hdf5_io import find_all_hdf5
    from data_utils.normalization import NormStats
    from data_utils.utils import get_norm_stats

    saved = NormStats.load(Path(full_ema_run.args.output_dir) / "checkpoint-2")
    recomputed, _ = get_norm_stats(
        find_all_hdf5(episodes_dir), camera_names=CAMERAS, chunk_size=saved.chunk_size,
        dataset_dirs=saved.dataset_dirs,
    )
    train_vla.check_resumed_stats(str(Path(full_ema_run.args.output_dir) / "checkpoint-2"), recomputed)
