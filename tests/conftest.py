"""Shared fixtures: generated example episodes (and, for model tests, the tiny offline Qwen2-VL)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
# No test may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

# Tiny models on 2 cores: a second intra-op thread only contends (it made steps ~100x slower).
torch.set_num_threads(1)

from scripts.make_example_episodes import make_example_episodes  # noqa: E402

CAMERAS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]
EVAL_CHUNK = 8  # chunk size of the tiny evaluation checkpoint


@pytest.fixture(scope="session")
def episodes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("example_episodes")
    make_example_episodes(out, num_episodes=4, episode_len=30, height=56, width=56, seed=0)
    return out


@pytest.fixture(scope="session")
def compressed_episodes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compressed_episodes")
    make_example_episodes(out, num_episodes=2, episode_len=30, height=56, width=56, seed=0, compress=True)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stock (model_type qwen2_vl) tiny Qwen2-VL directory, built offline."""
    from scripts.make_tiny_qwen2_vl import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl"))


BACKBONES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@pytest.fixture(scope="session", params=BACKBONES)
def tiny_backbone_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stock tiny checkpoint of each backbone (``scripts/make_tiny_vlm.py``); Qwen2-VL is ``tiny_model_dir``."""
    if request.param == "qwen2_vl":
        return request.getfixturevalue("tiny_model_dir")
    from scripts.make_tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp(f"tiny_{request.param}"), request.param)


@pytest.fixture(scope="session")
def tiny_vla_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, episodes_dir: Path) -> Path:
    """A self-contained (untrained) tiny VLA checkpoint directory, as evaluation loads it. Read-only.

    Its head is off its adaLN-Zero start (``build_tiny_checkpoint``'s ``head_init_std``): the actions it samples
    depend on the images, state and prompt, not on the DDIM noise alone."""
    from evaluate.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_vla_ckpt"), tiny_model_dir, episodes_dir, CAMERAS, EVAL_CHUNK)


OVERFIT_STEPS = 500  # updates of batch 8 on one 30-step episode (cosine decay)


@pytest.fixture(scope="session")
def overfit_vla_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_vla_ckpt: Path, episodes_dir: Path) -> Path:
    """``tiny_vla_ckpt`` overfit on episode 0 of ``episodes_dir`` (one training loop for the overfit and replay
    tests). Read-only; its per-step losses: ``evaluate.testing.read_overfit_log``."""
    from data_utils.hdf5_io import find_all_hdf5
    from evaluate.testing import overfit_checkpoint

    episode = find_all_hdf5(episodes_dir)[0]
    out = tmp_path_factory.mktemp("overfit_vla_ckpt")
    return overfit_checkpoint(tiny_vla_ckpt, episode, out, steps=OVERFIT_STEPS, batch_size=8, lr=1e-3)


# Real-looking cameras: ALOHA records 480x640 frames; the reference trains at (320, 240) (width, height).
CAMERA_HW = (480, 640)
STABLE_SIZE = (320, 240)
WRIST_SIZE = (160, 120)  # the wrist cameras at a different training size than the stable one


@pytest.fixture(scope="session")
def camera_episodes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 20-step episode with 480x640 frames."""
    out = tmp_path_factory.mktemp("camera_episodes")
    make_example_episodes(out, num_episodes=1, episode_len=20, height=CAMERA_HW[0], width=CAMERA_HW[1], seed=1)
    return out


@pytest.fixture(scope="session")
def camera_vla_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, camera_episodes_dir: Path) -> Path:
    """Like ``tiny_vla_ckpt``, but its config gives the training sizes ``STABLE_SIZE``/``WRIST_SIZE`` and its processor
    Qwen2-VL-2B's pixel budget (non-square patch grids: 99 image tokens per stable camera, 24 per wrist camera;
    the tiny model's own budget would give 12 for both). Read-only."""
    from evaluate.testing import build_tiny_checkpoint
    from scripts.make_tiny_qwen2_vl import REAL_MAX_PIXELS, REAL_MIN_PIXELS

    return build_tiny_checkpoint(
        tmp_path_factory.mktemp("camera_vla_ckpt"), tiny_model_dir, camera_episodes_dir, CAMERAS, EVAL_CHUNK,
        image_size=STABLE_SIZE, image_size_wrist=WRIST_SIZE, pixel_budget=(REAL_MIN_PIXELS, REAL_MAX_PIXELS),
    )


def _train_tiny_run(tiny_model_dir: Path, episodes_dir: Path, output_dir: Path, callbacks=None, **flags):
    """``train_vla.run`` on the tiny model and the session's episodes (see tests/test_train_vla.py)."""
    import train_vla
    from aloha_scripts.constants import TASK_CONFIGS
    from tests.test_train_vla import TASK, tiny_argv, tiny_task_config

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TASK_CONFIGS, TASK, tiny_task_config(episodes_dir))
        return train_vla.run(tiny_argv(tiny_model_dir, output_dir, **flags), callbacks=callbacks)


@pytest.fixture(scope="session")
def full_ema_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, episodes_dir: Path):
    """The trainer of a 2-step full fine-tuning run with EMA and ``use_reasoning False``; its ``output_dir`` holds
    the final model, ``checkpoint-2`` and the EMA model ``ema/``. Read-only."""
    out = tmp_path_factory.mktemp("full_ema_run")
    return _train_tiny_run(
        tiny_model_dir, episodes_dir, out, max_steps=2, save_steps=2, using_ema=True, use_reasoning=False
    )


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, episodes_dir: Path):
    """The trainer of a 2-step LoRA run (with reasoning); ``output_dir`` holds the final adapter, ``checkpoint-2``
    (an adapter on ``lora_base``) and the merged export ``merged/``. The trainer's model is merged. Read-only."""
    out = tmp_path_factory.mktemp("lora_run")
    return _train_tiny_run(
        tiny_model_dir, episodes_dir, out, max_steps=2, save_steps=2, lora_enable=True, lora_r=4, lora_alpha=8,
        freeze_backbone=True, freeze_vision_tower=True, learning_rate=1e-2, non_lora_lr=2e-3,
    )


@pytest.fixture(scope="session")
def real_width_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2-VL-2B's widths with 2 text + 2 vision layers, saved in bfloat16 as the download (~170M parameters)."""
    from scripts.make_tiny_qwen2_vl import build_real_width_qwen2_vl

    return build_real_width_qwen2_vl(tmp_path_factory.mktemp("real_width_qwen2_vl"))
