"""Open-loop replay evaluation (JSON + PNG), an overfit checkpoint beating a fresh one, and the real-robot stub."""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers

from data_utils.hdf5_io import find_all_hdf5
from data_utils.normalization import NormStats
from evaluate.eval_dexvla import build_parser, evaluate, format_table
from evaluate.metrics import chunk_errors, error_stats
from evaluate.policy import DexVLAPolicy
from evaluate.robots.replay import ReplayRobot, recorded_targets
from evaluate.testing import episode_chunks, mean_chunk
from tests.conftest import CAMERAS, EVAL_CHUNK

transformers.logging.set_verbosity_error()
CHUNK = EVAL_CHUNK




@pytest.fixture(scope="module")
def fresh_ckpt(tiny_vla_ckpt):
    return tiny_vla_ckpt


@pytest.fixture(scope="module")
def overfit_ckpt(overfit_vla_ckpt):
    return overfit_vla_ckpt


def replay(ckpt, episode, out, *extra: str) -> dict:
    args = build_parser().parse_args(
        ["--ckpt", str(ckpt), "--robot", "replay", "--episodes", str(episode), "--out", str(out),
         "--max_new_tokens", "12", "--warmup", "1", *extra]
    )
    return evaluate(args)


def test_replay_writes_metrics_and_plot(fresh_ckpt, episodes_dir, tmp_path):
    episode = find_all_hdf5(episodes_dir)[0]
    summary = replay(fresh_ckpt, episode, tmp_path, "--strategy", "temporal_agg")
    written = json.loads((tmp_path / "replay_metrics.json").read_text())
    assert written["executed_mse_norm"] == pytest.approx(summary["executed_mse_norm"])
    record = written["episodes"][0]
    assert record["steps"] == 30 and record["queries"] == 30  # temporal_agg queries on every frame
    for part in ("executed", "chunk"):
        for key in ("mse_raw", "l1_raw", "mse_norm", "l1_norm"):
            assert np.isfinite(record[part][key])
            assert len(record[part]["per_dim"][key]) == 14
    png = tmp_path / "replay_episode_0.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and record["plot"] == str(png)


def episode_mean_chunk(stats: NormStats, episode) -> np.ndarray:
    """``(chunk, action_dim)`` normalised: the best input-independent chunk for ``episode`` (least squares)."""
    return mean_chunk(*episode_chunks(stats, episode))


def replay_constant(monkeypatch, chunk: np.ndarray, ckpt, episode, out) -> dict:
    """Replay with a predictor that answers ``chunk`` (normalised) whatever it is shown; same pipeline otherwise."""

    def predict(self, features, states, prompts=None):
        return np.repeat(chunk[None].astype(np.float32), len(features), axis=0), [""] * len(features)

    with monkeypatch.context() as mp:
        mp.setattr(DexVLAPolicy, "_predict", predict)
        return replay(ckpt, episode, out, "--strategy", "chunk")


@pytest.mark.slow  # the shared overfit checkpoint, and four replays
def test_overfit_checkpoint_beats_fresh_mean_chunk_and_zero_predictors(
    fresh_ckpt, overfit_ckpt, episodes_dir, tmp_path, monkeypatch
):
    episode = find_all_hdf5(episodes_dir)[0]
    fresh = replay(fresh_ckpt, episode, tmp_path / "fresh", "--strategy", "chunk")
    overfit = replay(overfit_ckpt, episode, tmp_path / "overfit", "--strategy", "chunk")
    assert fresh["episodes"][0]["queries"] == 30  # replay queries every recorded frame by default
    # (Query counts of other execution horizons: unit tests in test_action_strategies.py.)
    # Predictors that ignore the observation: the all-zero chunk (mid-range actions) and the episode's mean
    # chunk, the best any such predictor can do. The overfit checkpoint must beat them clearly.
    stats = NormStats.load(overfit_ckpt)
    best_constant = episode_mean_chunk(stats, episode)
    zero = replay_constant(monkeypatch, np.zeros_like(best_constant), overfit_ckpt, episode, tmp_path / "zero")
    mean = replay_constant(monkeypatch, best_constant, overfit_ckpt, episode, tmp_path / "mean")
    for key in ("executed_mse_norm", "executed_mse_raw", "chunk_mse_norm"):
        scores = {"overfit": overfit[key], "fresh": fresh[key], "zero": zero[key], "mean_chunk": mean[key]}
        assert mean[key] < zero[key], (key, scores)  # the baseline is a fair one
        assert overfit[key] < 0.5 * min(fresh[key], zero[key], mean[key]), (key, scores)
    # It also learned the episode's reasoning.
    assert overfit["episodes"][0]["reasoning"][0]["text"].startswith("reach toward the red square")


def test_replay_of_camera_resolution_frames(camera_vla_ckpt, camera_episodes_dir, tmp_path):
    """480x640 recordings replayed through a policy trained at (320, 240) / (160, 120)."""
    episode = find_all_hdf5(camera_episodes_dir)[0]
    summary = replay(camera_vla_ckpt, episode, tmp_path, "--strategy", "chunk", "--exec_horizon", str(CHUNK))
    record = summary["episodes"][0]
    assert record["steps"] == 20 and record["queries"] == -(-20 // CHUNK)
    assert record["chunk"]["count"] == sum(min(CHUNK, 20 - t) for t in range(0, 20, CHUNK))
    for part in ("executed", "chunk"):
        assert all(np.isfinite(record[part][key]) for key in ("mse_raw", "mse_norm"))


def test_recorded_targets_follow_the_training_pairing():
    action = np.arange(5, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(recorded_targets(action, is_sim=True)[:, 0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(recorded_targets(action, is_sim=False)[:, 0], [0, 0, 1, 2, 3])


def test_replay_robot_plays_the_recording(episodes_dir):
    robot = ReplayRobot(find_all_hdf5(episodes_dir)[:2], CAMERAS)
    obs = robot.reset()
    assert sorted(obs["images"]) == sorted(CAMERAS) and obs["state"].shape == (14,) and obs["prompt"]
    for t in range(robot.length):
        info = robot.step(robot.targets[t])
        assert info.done == (t == robot.length - 1)
    executed, recorded = robot.executed_and_recorded()
    assert error_stats(executed, recorded)["mse_raw"] == 0.0
    robot.reset()
    assert robot.episode_path.name == "episode_1.hdf5"
    with pytest.raises(KeyError, match="camera_map"):
        ReplayRobot(find_all_hdf5(episodes_dir)[:1], ["top"]).reset()
    robot.close()


def test_chunk_errors_skip_steps_past_the_recording():
    recorded = np.zeros((4, 2))
    queries = [(0, np.ones((3, 2))), (2, np.ones((3, 2)))]  # the second chunk runs one step past the end
    assert error_stats(np.ones((5, 2)), np.zeros((5, 2)))["count"] == 5
    from data_utils.normalization import NormStats

    stats = NormStats(np.zeros(2), np.ones(2), -np.ones(2), np.ones(2), np.zeros(2), np.ones(2))
    result = chunk_errors(queries, recorded, stats)
    assert result["count"] == 5 and result["mse_raw"] == 1.0 and result["mse_norm"] == 1.0


def test_delta_control_chunk_errors_in_normalised_delta_units():
    from data_utils.normalization import NormStats

    actions = np.cumsum(np.full((6, 1), 0.5), axis=0)  # 0.5, 1.0, ... : every recorded delta is 0.5
    qpos = np.concatenate([[[0.0]], actions[:-1]])  # the state is the previous action
    stats = NormStats(np.zeros(1), np.ones(1), -np.ones(1), np.ones(1), np.zeros(1), np.ones(1), delta_control=True)
    exact = [(t, actions[t : t + 3]) for t in (1, 3)]  # what integrating the right deltas onto qpos gives
    result = chunk_errors(exact, actions, stats, is_sim=True, qpos=qpos)
    assert result["mse_raw"] == 0.0 and result["mse_norm"] == 0.0
    off = [(t, chunk + 0.25) for t, chunk in exact]  # the first delta of each chunk is 0.25 too large
    assert chunk_errors(off, actions, stats, is_sim=True, qpos=qpos)["mse_norm"] > 0.0
    assert "mse_norm" not in chunk_errors(exact, actions, stats)  # without states: raw units only


def test_chunk_errors_pair_real_robot_frames_as_training_does():
    from data_utils.normalization import NormStats

    stats = NormStats(np.zeros(1), np.ones(1), -np.ones(1) * 10, np.ones(1) * 10, np.zeros(1), np.ones(1))
    actions = np.arange(6, dtype=np.float64)[:, None]
    # On a real robot frames 0 and 1 both pair with actions[0:]; frame 3 with actions[2:].
    perfect = [(0, actions[0:3]), (1, actions[0:3]), (3, actions[2:5])]
    assert chunk_errors(perfect, actions, stats, is_sim=False)["mse_raw"] == 0.0
    assert chunk_errors(perfect, actions, stats, is_sim=True)["mse_raw"] > 0.0


def test_agilex_without_ros_says_what_is_missing():
    try:
        import rospy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("ROS is installed here; the missing-ROS message cannot be checked")
    from evaluate.robots.agilex import AgileXRobot

    with pytest.raises(RuntimeError, match="rospy.*sensor_msgs.*cv_bridge"):
        AgileXRobot(CAMERAS)


def test_summary_table_formatting():
    table = format_table([{"a": 1, "b": 0.123456, "c": None}, {"a": "mean", "b": True}], ["a", "b", "c"])
    lines = table.splitlines()
    assert lines[0].split() == ["a", "b", "c"] and lines[2].split() == ["1", "0.1235", "-"]
    assert lines[3].split() == ["mean", "yes", "-"]


def test_agilex_observations_must_be_fresh():
    """Without ROS: drive the subscriber callbacks by hand; a silent topic must stop the loop."""
    import threading
    from types import SimpleNamespace

    from evaluate.robots.agilex import AgileXRobot

    robot = AgileXRobot.__new__(AgileXRobot)  # skip the ROS node; the callbacks are plain methods
    robot.camera_names, robot.prompt, robot.obs_timeout_s = ["cam_high"], "p", 0.05
    robot._lock, robot._images, robot._arms = threading.Condition(), {}, [None, None]
    robot._received, robot._last_obs_time = {}, float("-inf")
    robot._bridge = SimpleNamespace(imgmsg_to_cv2=lambda msg, desired_encoding: msg)
    frame = np.zeros((4, 4, 3), dtype=np.uint8)

    def publish_all():
        robot._on_image(frame, "cam_high")
        for arm in (0, 1):
            robot._on_joints(SimpleNamespace(position=[0.1] * 7), arm)

    publish_all()
    assert robot.get_obs()["state"].shape == (14,)
    robot._on_image(frame, "cam_high")  # the arms fall silent
    with pytest.raises(TimeoutError, match="arm0, arm1"):
        robot.get_obs()
    publish_all()
    assert robot.get_obs()["images"]["cam_high"].shape == (4, 4, 3)
