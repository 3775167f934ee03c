"""Stage-1 pretraining script: trains the expert on the project's episodes and stage 2 can load the result."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel

from aloha_scripts.constants import TASK_CONFIGS
from data_utils.normalization import NormStats
from policy_heads import ScaleDP, load_pretrained_dit
from scripts.train_stage1_scaledp import Stage1Arguments, load_encoder_checkpoint, main
from tests.conftest import CAMERAS  # noqa: E402

TASK = "stage1_test_task"


@pytest.fixture()
def task(episodes_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(
        TASK_CONFIGS, TASK, {"dataset_dir": [str(episodes_dir)], "episode_len": 30, "camera_names": CAMERAS}
    )
    return TASK


def test_stage1_trains_and_stage2_loads_the_expert(task: str, tmp_path: Path) -> None:
    out = tmp_path / "stage1"
    argv = [
        "--task_name", task,
        "--output_dir", str(out),
        "--policy_head_size", "ScaleDP_tiny",
        "--cond_dim", "32",
        "--chunk_size", "8",
        "--state_dim", "14",
        "--action_dim", "14",
        "--image_encoder", "test_resnet",
        "--image_size", "(48,40)",
        "--max_steps", "3",
        "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3",
        "--use_cpu", "True",
        "--save_strategy", "no",
        "--logging_steps", "1",
        "--dataloader_num_workers", "0",
        "--seed", "0",
    ]  # fmt: skip
    head_dir = main(argv)
    assert head_dir == out / "policy_head"
    assert NormStats.load(out).action_dim == 14  # dataset_stats.json next to the weights

    trained = AutoModel.from_pretrained(head_dir)
    assert isinstance(trained, ScaleDP) and trained.config.cond_dim == 32
    # Training moved the adaLN-Zero layers away from zero.
    assert torch.count_nonzero(trained.final_layer.linear.weight) > 0

    # Stage 2 builds a fresh expert with the same shape and loads stage 1 into it, from either output.
    for path in (head_dir, out):
        torch.manual_seed(1)
        fresh = AutoModel.from_config(AutoConfig.from_pretrained(head_dir))
        report = load_pretrained_dit(fresh, path)
        assert report.missing == [] and report.unexpected == []
        expected = trained.state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in fresh.state_dict().items())
    assert any(k.startswith("image_encoder.") for k in report.dropped)  # the wrapper's encoder is not the expert


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"policy_head_size": "ScaleDP_XL"}, "policy_head_size"),
        ({"image_encoder": "not_a_timm_model"}, "image_encoder"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Stage1Arguments(**kwargs)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_encoder_checkpoint(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    path = tmp_path / f"encoder{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save({"state_dict": state}, path)
    torch.manual_seed(1)
    target = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    load_encoder_checkpoint(target, str(path))
    assert all(torch.equal(v, state[k]) for k, v in target.state_dict().items())
