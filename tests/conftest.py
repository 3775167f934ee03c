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


@pytest.fixture(scope="session")
def tiny_vla_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, episodes_dir: Path) -> Path:
    """A self-contained (untrained) tiny VLA checkpoint directory, as evaluation loads it. Read-only."""
    from evaluate.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_vla_ckpt"), tiny_model_dir, episodes_dir, CAMERAS, EVAL_CHUNK)
