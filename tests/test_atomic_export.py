"""The final export (output_dir itself, ema/, merged/, lora_base/) is atomic like checkpoint-N."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

import train_vla
from data_utils.normalization import NormStats
from qwen2_vla.trainer import STAGING_PREFIX, publish_files_into, replace_directory
from tests.conftest import _train_tiny_run


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Crash(RuntimeError):
    pass


def test_crash_during_final_export_keeps_the_previous_model(tiny_model_dir, episodes_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = _train_tiny_run(tiny_model_dir, episodes_dir, out, max_steps=1, save_steps=1, using_ema=True)
    before = {name: digest(out / name) for name in ("model.safetensors", "config.json")}
    ema_before = digest(out / "ema" / "model.safetensors")
    with torch.no_grad():
        next(p for p in trainer.model.parameters() if p.requires_grad).add_(1.0)

    # The statistics are written after the weights: a crash there used to leave new weights beside
    # the old config (and, in ema/, a half-written model).
    def crash(self, path):
        raise Crash("disk full")

    monkeypatch.setattr(NormStats, "save", crash)
    with pytest.raises(Crash):
        trainer.save_model()
    with pytest.raises(Crash):
        train_vla.save_ema_model(trainer, str(out / "ema"))
    assert {name: digest(out / name) for name in before} == before
    assert digest(out / "ema" / "model.safetensors") == ema_before
    assert (out / "checkpoint-1" / "model.safetensors").exists()

    monkeypatch.undo()
    trainer.save_model()
    train_vla.save_ema_model(trainer, str(out / "ema"))
    assert (out / "ema" / "config.json").exists()  # the EMA shadow itself did not change
    assert digest(out / "model.safetensors") != before["model.safetensors"]
    assert not [p.name for p in out.iterdir() if p.name.startswith((STAGING_PREFIX, ".old-"))]
    reloaded = NormStats.load(out)
    assert reloaded.to_dict() == trainer.norm_stats.to_dict()


def test_publish_files_into_replaces_stale_weights_and_keeps_other_files(tmp_path) -> None:
    target, staging = tmp_path / "run", tmp_path / "run" / ".staging-export"
    target.mkdir()
    for name in ("model-00001-of-00002.safetensors", "model.safetensors.index.json", "config.json"):
        (target / name).write_text("old")
    (target / "checkpoint-2").mkdir()
    (target / "trainer_state.json").write_text("state")
    staging.mkdir()
    (staging / "model.safetensors").write_text("new")
    (staging / "config.json").write_text("new config")
    publish_files_into(str(staging), str(target))
    assert sorted(p.name for p in target.iterdir()) == [
        "checkpoint-2", "config.json", "model.safetensors", "trainer_state.json"
    ]
    assert (target / "config.json").read_text() == "new config"
    assert not staging.exists()


def test_replace_directory_never_leaves_nothing(tmp_path, monkeypatch) -> None:
    target, staging = tmp_path / "merged", tmp_path / ".staging-merged"
    target.mkdir()
    (target / "model.safetensors").write_text("old")
    staging.mkdir()
    (staging / "model.safetensors").write_text("new")
    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise Crash("power cut between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(Crash):
        replace_directory(str(staging), str(target))
    monkeypatch.undo()
    # The old copy survives beside (".old-merged"), the new one in staging: nothing is lost.
    assert (tmp_path / ".old-merged" / "model.safetensors").read_text() == "old"
    assert (staging / "model.safetensors").read_text() == "new"
    replace_directory(str(staging), str(target))
    assert (target / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
