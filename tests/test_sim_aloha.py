"""gym-aloha simulation: scripted demonstrations (success rate, recorded episodes) and a closed-loop rollout.

These need gym-aloha + MuJoCo (rendering through EGL), both pinned requirements: if they cannot be
imported the suite fails. Only ``DEXVLA_SKIP_SIM=1`` skips them, and says so.
"""

from __future__ import annotations

import json
import os
import warnings

import h5py
import numpy as np
import pytest
import transformers

from evaluate.robots.aloha_sim import gym_aloha_import_error

SIM_IMPORT_ERROR = gym_aloha_import_error()
# gym-aloha and MuJoCo are pinned requirements: a broken simulation fails the suite. Only an explicit
# DEXVLA_SKIP_SIM=1 (e.g. a machine without any EGL) turns these tests off, and says so.
SKIP_SIM = os.environ.get("DEXVLA_SKIP_SIM") == "1"
if SKIP_SIM:
    warnings.warn("DEXVLA_SKIP_SIM=1: THE SIMULATION TESTS DID NOT RUN", stacklevel=1)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SKIP_SIM, reason="DEXVLA_SKIP_SIM=1: the simulation tests did NOT run"),
]


def test_gym_aloha_imports():
    assert SIM_IMPORT_ERROR is None, f"gym-aloha cannot be imported: {SIM_IMPORT_ERROR}"
transformers.logging.set_verbosity_error()


@pytest.mark.parametrize(("task", "num_episodes", "min_successes"), [("transfer_cube", 5, 5), ("insertion", 4, 4)])
def test_scripted_policy_success_rate(task, num_episodes, min_successes, tmp_path):
    from scripts.record_sim_episodes import record_sim_episodes

    # dry_run: no rendering, no episode files; success is judged on the joint-space replay, as when recording.
    summary = record_sim_episodes(task, tmp_path, num_episodes, seed=0, dry_run=True, log=lambda *a: None)
    assert summary["num_success"] >= min_successes, f"scripted {task}: {summary['episodes']}"
    assert all(e["ee_max_reward"] >= e["max_reward"] for e in summary["episodes"])


def test_record_sim_episodes_writes_act_layout(tmp_path):
    from data_utils.check_data_integrity import check_episode
    from data_utils.hdf5_io import read_frame, read_language, read_reasoning
    from scripts.record_sim_episodes import record_sim_episodes

    summary = record_sim_episodes(
        "transfer_cube", tmp_path, num_episodes=1, seed=0, camera_names=["top", "left_wrist"], height=48, width=64,
        compress=True, log=lambda *a: None,
    )
    assert summary["success_rate"] == 1.0 and summary["num_written"] == 1
    assert json.loads((tmp_path / "record_summary.json").read_text())["num_success"] == 1
    path = tmp_path / "episode_0.hdf5"
    assert check_episode(path, ["top", "left_wrist"], state_dim=14, action_dim=14) == []
    with h5py.File(path, "r") as root:
        assert root["/action"].shape == (400, 14) and root.attrs["sim"]
        assert read_frame(root, "top", 10).shape == (48, 64, 3)
        assert "cube" in read_language(root)
        substeps = [read_reasoning(root, t) for t in range(400)]
    assert substeps[0].startswith("reach the cube") and any("hand over" in s for s in substeps)
    assert any(s.startswith("grasp") for s in substeps) and any(s.startswith("lift") for s in substeps)


def test_closed_loop_rollout_of_the_tiny_policy(tmp_path, tiny_vla_ckpt):
    from evaluate.eval_dexvla import build_parser, evaluate

    # A policy with ALOHA camera names: the sim renders cam_high from `top` and the wrists from the wrist cameras.
    args = build_parser().parse_args(
        ["--ckpt", str(tiny_vla_ckpt), "--robot", "aloha_sim", "--task", "transfer_cube", "--num_episodes", "1",
         "--max_steps", "12", "--strategy", "chunk", "--exec_horizon", "4", "--max_new_tokens", "2",
         "--sim_height", "48", "--sim_width", "64", "--save_video", "--out", str(tmp_path / "sim"), "--warmup", "1"]
    )
    summary = evaluate(args)
    episode = summary["episodes"][0]
    assert episode["steps"] == 12 and episode["queries"] == 3
    assert summary["success_rate"] == 0.0 and np.isfinite(summary["mean_return"])  # a tiny random policy
    assert json.loads((tmp_path / "sim" / "sim_results.json").read_text())["num_episodes"] == 1
    video = tmp_path / "sim" / "videos" / "transfer_cube_episode_0.mp4"
    assert video.exists() and video.stat().st_size > 0 and episode["video"] == str(video)
