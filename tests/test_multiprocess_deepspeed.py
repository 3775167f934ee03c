"""DeepSpeed on 2 CPU processes beyond ZeRO-2 parity: ZeRO-3 train/save/resume/serve, its LoRA merged export,
and the real-width bf16 checkpoint under ZeRO-2 with ``--bf16 True`` (the path a real stage-2 run takes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.test_multiprocess_train import _free_port, launch_env  # noqa: F401  (launch_env is a fixture)
from tests.test_train_vla import REPO_ROOT, tiny_argv, train_logs

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
ZERO3 = str(REPO_ROOT / "scripts" / "zero3.json")
ZERO2 = str(REPO_ROOT / "scripts" / "zero2.json")


def _deepspeed(model_dir: Path, output_dir: Path, env: dict[str, str], **overrides) -> dict:
    """Run train_vla.py under the deepspeed launcher on 2 CPU processes; returns ``trainer_state.json``."""
    args = {"task_name": "example_tasks", "max_steps": 3, "save_steps": 2, **overrides}
    port = _free_port()
    launcher = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(port)]
    done = subprocess.run(
        [*launcher, str(REPO_ROOT / "train_vla.py"), *tiny_argv(model_dir, output_dir, **args)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    # DeepSpeed's CPU all-reduce buffers (~69 MB of RAM each) are removed when the ranks exit.
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    return json.loads((output_dir / "trainer_state.json").read_text())


def _observation(policy) -> dict:
    rng = np.random.default_rng(0)
    images = {cam: rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for cam in policy.camera_names}
    return {"images": images, "state": np.zeros(policy.state_dim, np.float32), "prompt": "pick up the cube"}


def _assert_serves(ckpt: Path) -> None:
    from evaluate.policy import DexVLAPolicy

    policy = DexVLAPolicy(ckpt, max_new_tokens=4)
    actions = policy.infer(_observation(policy))["actions"]
    assert actions.shape == (policy.chunk_size, policy.action_dim) and np.isfinite(actions).all()


def test_zero3_trains_saves_resumes_and_serves(tiny_model_dir, launch_env, tmp_path):  # noqa: F811
    full = _deepspeed(tiny_model_dir, tmp_path / "full", launch_env, deepspeed=ZERO3)
    # A run interrupted after step 2 resumes from (a copy of) that checkpoint with the same data, losses, weights.
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", resumed_dir / "checkpoint-2")
    resumed = _deepspeed(tiny_model_dir, resumed_dir, launch_env, deepspeed=ZERO3, resume_from_checkpoint=True)
    full_logs, resumed_logs = train_logs(full["log_history"]), train_logs(resumed["log_history"])
    assert [e["step"] for e in full_logs] == [1, 2, 3] and resumed_logs[-1]["step"] == 3
    for key in ("loss", "llm_loss", "action_loss", "learning_rate"):
        assert resumed_logs[-1][key] == pytest.approx(full_logs[-1][key], rel=1e-5), key
    # ZeRO-3 shards parameters; the saved model is gathered whole (stage3_gather_16bit_weights_on_model_save).
    full_weights = load_file(str(tmp_path / "full" / "model.safetensors"))
    resumed_weights = load_file(str(resumed_dir / "model.safetensors"))
    assert any(name.startswith("policy_head.") for name in full_weights)
    assert all(value.numel() > 0 for value in full_weights.values())
    for name, value in full_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)
    _assert_serves(tmp_path / "full")


def test_zero3_lora_run_exports_a_merged_model_that_serves(tiny_model_dir, launch_env, tmp_path):  # noqa: F811
    flags = {"lora_enable": True, "freeze_backbone": True, "freeze_vision_tower": True, "lora_r": 4, "lora_alpha": 8}
    _deepspeed(tiny_model_dir, tmp_path / "lora", launch_env, deepspeed=ZERO3, max_steps=2, save_steps=2, **flags)
    merged = tmp_path / "lora" / "merged"
    merged_weights = load_file(str(merged / "model.safetensors"))
    base_weights = load_file(str(tiny_model_dir / "model.safetensors"))
    # Legacy or current key names: compare one adapted LLM projection, wherever it lives.
    name = next(n for n in merged_weights if n.endswith("layers.0.self_attn.q_proj.weight"))
    base_name = next(n for n in base_weights if n.endswith("layers.0.self_attn.q_proj.weight"))
    assert merged_weights[name].shape == base_weights[base_name].shape
    assert not torch.equal(merged_weights[name].float(), base_weights[base_name].float())  # LoRA merged in
    assert not any("lora_" in n for n in merged_weights)
    _assert_serves(merged)


def test_real_width_bf16_checkpoint_under_zero2_bf16_trains_and_resumes(
    real_width_model_dir, launch_env, tmp_path  # noqa: F811
):
    flags = dict(deepspeed=ZERO2, bf16=True, max_steps=2, save_steps=1, per_device_train_batch_size=1,
                 learning_rate=2e-5)
    state = _deepspeed(real_width_model_dir, tmp_path / "run", launch_env, **flags)
    logs = train_logs(state["log_history"])
    assert [e["step"] for e in logs] == [1, 2]
    assert all(np.isfinite([e["loss"], e["llm_loss"], e["action_loss"]]).all() for e in logs)
    # DeepSpeed keeps the fp32 master copy in its optimizer shards, beside the bf16 module weights.
    shards = sorted((tmp_path / "run" / "checkpoint-2").glob("global_step2/*optim_states.pt"))
    assert len(shards) == 2
    master = torch.load(shards[0], map_location="cpu", weights_only=False)["optimizer_state_dict"]
    groups = master["single_partition_of_fp32_groups"]
    assert groups and all(t.dtype == torch.float32 for t in groups)
    # Interrupted after step 1: a copy of that checkpoint resumes to the same step-2 losses and weights.
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "run" / "checkpoint-1", resumed_dir / "checkpoint-1")
    resumed = train_logs(
        _deepspeed(real_width_model_dir, resumed_dir, launch_env, resume_from_checkpoint=True, **flags)["log_history"]
    )
    assert resumed[-1]["step"] == 2
    for key in ("loss", "llm_loss", "action_loss", "learning_rate"):
        assert resumed[-1][key] == pytest.approx(logs[-1][key], rel=1e-4), key
    run_weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    resumed_weights = load_file(str(resumed_dir / "model.safetensors"))
    for name, value in run_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, msg=name)
    _assert_serves(tmp_path / "run")
