"""The UNet (DiVLA) head end to end through train_vla.py: LoRA on di_head, save, merge, reload, evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

import train_vla
from data_utils.hdf5_io import find_all_hdf5
from policy_heads import ConditionalUnet1D
from qwen2_vla import Qwen2VLAForConditionalGeneration
from qwen2_vla.model_load_utils import HEAD_FULLY_TRAINED
from qwen2_vla.trainer import LORA_BASE_DIR_NAME
from tests.test_eval_policy import observation
from tests.test_train_vla import tiny_argv, tiny_task  # noqa: F401  (tiny_task is a fixture)

CHUNK = 8


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    return state


def test_unet_head_lora_train_merge_evaluate(tiny_model_dir: Path, tiny_task: str, episodes_dir: Path, tmp_path):  # noqa: F811
    out = tmp_path / "divla"
    trainer = train_vla.run(
        tiny_argv(
            tiny_model_dir,
            out,
            policy_head_type="unet_diffusion_policy",
            policy_head_size=None,
            chunk_size=CHUNK,
            max_steps=2,
            save_steps=2,
            lora_enable=True,
            lora_module="llm di_head",
            lora_r=4,
            lora_alpha=8,
            freeze_backbone=True,
            freeze_vision_tower=True,
            non_lora_lr=1e-2,
        )
    )
    assert trainer.state.global_step == 2
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(np.isfinite(entry["action_loss"]) for entry in logs)

    # Untrained weights: the run's frozen base (written once, before any merge).
    base = _weights(out / LORA_BASE_DIR_NAME)
    merged_dir = out / train_vla.MERGED_DIR_NAME
    merged = _weights(merged_dir)
    head_keys = sorted(k for k in base if k.startswith("policy_head."))
    assert head_keys and set(head_keys) == {k for k in merged if k.startswith("policy_head.")}

    def changed(key: str) -> bool:
        return not torch.equal(base[key], merged[key])

    # Fully trained head modules (the reference's non-LoRA head modules): present and updated.
    fully = [k for k in head_keys if k.split(".")[1] in HEAD_FULLY_TRAINED]
    assert sorted(fully) == ["policy_head.norm_after_pool.bias", "policy_head.norm_after_pool.weight"]
    assert all(changed(k) for k in fully), fully
    # LoRA-adapted head linears (the 2-D weights): the merged update lands in every one of them.
    adapted = [k for k in head_keys if base[k].ndim == 2]
    assert {"policy_head.combine.weight", "policy_head.diffusion_step_encoder.1.weight"} <= set(adapted)
    assert any(".cond_encoder.1." in k for k in adapted)
    assert [k for k in adapted if not changed(k)] == []
    # Everything else in the head was frozen: convolutions, GroupNorms and the linears' biases stay put.
    frozen = [k for k in head_keys if k not in fully and k not in adapted]
    assert any(".conv." in k for k in frozen)
    assert [k for k in frozen if changed(k)] == []

    # The merged export is a plain VLA with the UNet head; it evaluates to finite actions of the right shape.
    model = Qwen2VLAForConditionalGeneration.from_pretrained(merged_dir)
    assert isinstance(model.policy_head, ConditionalUnet1D)
    torch.testing.assert_close(model.policy_head.norm_after_pool.weight, merged["policy_head.norm_after_pool.weight"])
    del model

    from evaluate.policy import DexVLAPolicy

    policy = DexVLAPolicy(merged_dir, device="cpu", dtype="float32", max_new_tokens=2, seed=0)
    result = policy.infer(observation(find_all_hdf5(episodes_dir)[0], 3))
    assert result["actions"].shape == (CHUNK, 14) and result["actions"].dtype == np.float32
    assert np.isfinite(result["actions"]).all()

