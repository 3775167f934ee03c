"""LeRobot datasets as a training source: the committed fixture (written by lerobot 0.4.4 itself) trains, replays,
mixes with HDF5 in one task, and is checked before the first step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train_vla
from aloha_scripts.constants import TASK_CONFIGS
from data_utils.check_data_integrity import DataIntegrityError, check_dirs
from data_utils.dataset import EpisodicDataset
from data_utils.episode_source import find_episodes, lerobot_episode_ref, open_episode
from data_utils.normalization import NormStats
from data_utils.utils import get_norm_stats, load_data
from evaluate.eval_dexvla import build_parser, evaluate
from tests import lerobot_fixture_spec as spec
from tests.conftest import CAMERAS
from tests.test_train_vla import tiny_argv

FIXTURE = Path(__file__).parent / "data" / "lerobot_fixture"
TASK = "pytest_lerobot"
# The fixture's cameras differ in resolution: samples resize them (as training's --image_size_stable does).
SIZED = {"data_args": SimpleNamespace(image_size_stable="(56,56)")}


def lerobot_task(*dirs: Path) -> dict:
    return {"dataset_dir": [str(d) for d in dirs], "episode_len": 30, "camera_names": CAMERAS}


def test_fixture_episodes_read_as_samples() -> None:
    refs = find_episodes(FIXTURE)
    assert refs == [lerobot_episode_ref(FIXTURE, i) for i in range(3)]
    stats, lengths = get_norm_stats(refs, camera_names=CAMERAS, chunk_size=8)
    assert lengths == [20, 25, 30] and stats.num_steps == 75
    dataset = EpisodicDataset(refs, CAMERAS, stats, [1], [25], chunk_size=8, image_size=(56, 56), augment_images=False)
    raw = dataset.load_raw_step(1, 22)
    # LeRobot pairs action[t] with frame t: the chunk of frame 22 is action[22:30] of episode 1, padded after 3.
    with open_episode(refs[1]) as episode:
        expected = np.asarray(episode.action(22, 25), np.float32)
        assert episode.is_sim and episode.reasoning(22) == spec.reasoning(1, 22)
    np.testing.assert_array_equal(raw["action"][:3], expected)
    assert raw["is_pad"].tolist() == [False] * 3 + [True] * 5
    assert raw["raw_lang"] == spec.task(1) and raw["reasoning"] == spec.reasoning(1, 22)
    # Cameras named without the "observation.images." prefix find their features; frames are the right ones.
    assert [f.shape for f in raw["images"]] == [(48, 64, 3), (24, 32, 3), (24, 32, 3)]
    sample = dataset[3]
    assert sample["image"].shape == (3, 3, 56, 56) and torch.isfinite(sample["state"]).all()


def test_lerobot_trains_and_replays(tiny_model_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(TASK_CONFIGS, TASK, lerobot_task(FIXTURE))
    out = tmp_path / "run"
    trainer = train_vla.run(tiny_argv(tiny_model_dir, out, task_name=TASK, max_steps=2, save_steps=2))
    assert trainer.state.global_step == 2
    stats = NormStats.load(out)
    assert stats.num_episodes == 3 and stats.num_steps == 75
    episode = lerobot_episode_ref(FIXTURE, 2)
    args = build_parser().parse_args(
        ["--ckpt", str(out), "--robot", "replay", "--episodes", episode, "--out", str(tmp_path / "eval"),
         "--max_new_tokens", "4", "--warmup", "0", "--exec_horizon", "8"]
    )
    summary = evaluate(args)
    record = json.loads((tmp_path / "eval" / "replay_metrics.json").read_text())["episodes"][0]
    assert record["episode"] == episode and record["steps"] == 30 and record["queries"] == 4
    assert np.isfinite(summary["executed_mse_norm"]) and np.isfinite(record["chunk"]["mse_norm"])


def test_task_mixing_hdf5_and_lerobot_trains(tiny_model_dir, episodes_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(TASK_CONFIGS, TASK, lerobot_task(episodes_dir, FIXTURE))
    out = tmp_path / "run"
    trainer = train_vla.run(
        tiny_argv(tiny_model_dir, out, task_name=TASK, max_steps=2, save_steps=2, use_reasoning=True)
    )
    stats = NormStats.load(out)
    assert stats.num_episodes == 4 + 3 and stats.num_steps == 4 * 30 + 75
    # The sampler draws from both directories: the second's episodes are training data in full.
    episode_len_l = trainer.sampler_params["train"]["episode_len_l"]
    assert len(episode_len_l) == 2 and sorted(episode_len_l[1]) == [20, 25, 30]


def test_lerobot_problems_stop_training_before_the_first_step(tmp_path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(FIXTURE, broken)
    info = json.loads((broken / "meta" / "info.json").read_text())
    info["features"]["action"]["shape"] = [7]  # metadata promises another width than the data holds
    (broken / "meta" / "info.json").write_text(json.dumps(info))
    problems = check_dirs([str(broken)], CAMERAS, state_dim=14, action_dim=14, check_images=False)
    assert any("feature 'action' (action) has shape (7,), expected (14,)" in line for line in problems), problems
    with pytest.raises(DataIntegrityError, match="expected \\(14,\\)"):
        load_data([str(broken)], None, CAMERAS, 2, 2, 8, state_dim=14, action_dim=14, rank0_print=lambda *a: None)
    # A camera the root does not have is named, with the features it does have.
    problems = check_dirs([str(FIXTURE)], [*CAMERAS, "cam_low"], 14, 14, check_images=False)
    assert len(problems) == 1 and "cam_low" in problems[0]
    assert check_dirs([str(FIXTURE)], CAMERAS, 14, 14, check_images=True) == []


def test_task_lerobot_features_override_the_default_keys(tmp_path) -> None:
    from data_utils.episode_source import configure_lerobot_features

    try:
        # Train "action" on the state feature: the samples must carry the state's values as actions.
        train, _, stats, _ = load_data(
            [str(FIXTURE)], None, CAMERAS, 2, 2, 8, state_dim=14, action_dim=14, rank0_print=lambda *a: None,
            lerobot_features={"action": "observation.state"}, train_ratio=1.0, config=SIZED,
        )
        ref = lerobot_episode_ref(FIXTURE, 0)
        index = train.dataset_path_list.index(ref)
        raw = train.load_raw_step(index, 5)
        np.testing.assert_array_equal(raw["action"][0], spec.state(0)[5])
        np.testing.assert_allclose(stats.action_mean, stats.qpos_mean, rtol=1e-6)
        # The setting travels with the dataset to a spawned worker (pickled, restored on load).
        import pickle

        configure_lerobot_features(FIXTURE, None)
        restored = pickle.loads(pickle.dumps(train))
        np.testing.assert_array_equal(restored.load_raw_step(index, 5)["action"][0], spec.state(0)[5])
        with pytest.raises(ValueError, match="feature 'annotation.reasoning' \\(reasoning\\) missing"):
            load_data([str(FIXTURE)], None, CAMERAS, 2, 2, 8, rank0_print=lambda *a: None,
                      lerobot_features={"reasoning": "annotation.reasoning"})
    finally:
        configure_lerobot_features(FIXTURE, None)
