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

from scripts.make_example_episodes import make_example_episodes  # noqa: E402

CAMERAS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]


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
