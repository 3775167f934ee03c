"""``delta_control``: training's deltas and deployment's integration share one time alignment.

Training's chunk for frame ``t`` (starting at ``s = chunk_start(t, sim)``) is ``d[0] = action[s] - qpos[t]``,
``d[k] = action[s+k] - action[s+k-1]``; deployment integrates ``state + cumsum(d)`` from the state measured at
the query. So a model that predicts the recorded deltas reproduces the recorded actions, at every frame.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from data_utils.dataset import EpisodicDataset, chunk_action_deltas, chunk_start, integrate_action_deltas
from data_utils.hdf5_io import episode_length, find_all_hdf5, read_frame, read_language
from data_utils.normalization import NormStats, RunningStats
from data_utils.utils import episode_delta_counts, get_norm_stats
from evaluate.metrics import chunk_errors, executed_errors
from evaluate.policy import postprocess_actions
from scripts.make_example_episodes import make_example_episodes
from tests.conftest import CAMERAS

CHUNK = 8
EPISODE_LEN = 16


def _episode(directory: Path, sim: bool) -> Path:
    """One generated episode whose actions are exactly the next qpos (``action[t] = qpos[t + 1]``)."""
    path = make_example_episodes(directory, num_episodes=1, episode_len=EPISODE_LEN, height=28, width=28, sim=sim)[0]
    with h5py.File(path, "r") as root:
        assert bool(root.attrs["sim"]) is sim
        np.testing.assert_array_equal(root["/action"][:-1], root["/observations/qpos"][1:])
    return path


def _recorded(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as root:
        return root["/action"][()], root["/observations/qpos"][()]


def _delta_dataset(path: Path, stats: NormStats) -> EpisodicDataset:
    return EpisodicDataset(
        [str(path)], CAMERAS, stats, [0], [episode_length(path)], CHUNK, augment_images=False,
        delta_control=True, rank0_print=lambda *a: None,
    )


@pytest.mark.parametrize("sim", [True, False], ids=["sim", "real_robot"])
def test_perfect_predictor_reproduces_the_recorded_actions(tmp_path, sim):
    path = _episode(tmp_path, sim)
    action, qpos = _recorded(path)
    stats, _ = get_norm_stats([str(path)], delta_control=True, chunk_size=CHUNK)
    dataset = _delta_dataset(path, stats)
    queries = []
    for t in (0, 1, EPISODE_LEN // 2, EPISODE_LEN - 2):
        sample = dataset[t]  # what training fits: the normalised delta chunk of frame t
        keep = ~sample["is_pad"].numpy()
        # The "perfect predictor" outputs exactly that; deployment integrates it from the state at frame t.
        actions = postprocess_actions(sample["action"].numpy()[None], qpos[t][None], stats)[0]
        start = chunk_start(t, sim)
        expected = action[start : start + CHUNK]
        assert keep.sum() == len(expected)
        np.testing.assert_allclose(actions[keep], expected, rtol=0, atol=1e-5, err_msg=f"frame {t}")
        queries.append((t, actions[keep]))
    # Frame 0 pairs with action[0] on both kinds of episode; its first delta is action[0] - qpos[0], not 0.
    np.testing.assert_allclose(queries[0][1][0], action[0], rtol=0, atol=1e-5)
    assert np.abs(chunk_action_deltas(action[:CHUNK], qpos[0])[0]).max() > 1e-3
    # Replay's metrics agree: zero error in raw and in normalised delta units.
    errors = chunk_errors(queries, action, stats, is_sim=sim, qpos=qpos)
    assert errors["mse_raw"] < 1e-10 and errors["mse_norm"] < 1e-9
    executed = np.stack([chunk[0] for _, chunk in queries])
    steps = [t for t, _ in queries]
    targets = action[[chunk_start(t, sim) for t in steps]]
    assert executed_errors(executed, targets, stats, qpos[steps])["mse_norm"] < 1e-9


def test_integration_is_the_inverse_of_the_training_deltas():
    rng = np.random.default_rng(0)
    actions, state = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 3))
    deltas = np.stack([chunk_action_deltas(a, s) for a, s in zip(actions, state, strict=True)])
    np.testing.assert_allclose(integrate_action_deltas(deltas, state), actions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(deltas[:, 0], actions[:, 0] - state)
    with pytest.raises(ValueError, match="action_dim == state_dim"):
        chunk_action_deltas(actions[0], state[0, :2])


@pytest.mark.parametrize("sim", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 3, 20])
def test_delta_counts_are_exactly_the_training_chunks(sim, chunk_size):
    """The streamed statistics weigh every delta as often as the dataset's chunks hold it."""
    rng = np.random.default_rng(chunk_size)
    length = 9
    action, qpos = rng.normal(size=(length, 2)), rng.normal(size=(length, 2))
    brute = np.concatenate(
        [chunk_action_deltas(action[chunk_start(t, sim) : chunk_start(t, sim) + chunk_size], qpos[t]) for t in range(length)]
    )
    rows, counts = episode_delta_counts(action, qpos, sim, chunk_size)
    streamed = RunningStats()
    streamed.update(rows, counts)
    direct = RunningStats()
    direct.update(brute)
    assert streamed.count == direct.count == len(brute)
    np.testing.assert_allclose(streamed.mean, direct.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(streamed.std, direct.std, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(streamed.min, direct.min)
    np.testing.assert_array_equal(streamed.max, direct.max)


def test_delta_statistics_need_matching_dims_and_a_chunk_size(tmp_path):
    path = _episode(tmp_path, sim=True)
    with pytest.raises(ValueError, match="chunk size"):
        get_norm_stats([str(path)], delta_control=True)
    with h5py.File(path, "r+") as root:
        action = root["/action"][()]
        del root["/action"]
        root.create_dataset("/action", data=action[:, :10])
    with pytest.raises(ValueError, match=r"episode_0.hdf5: delta_control .*action_dim == state_dim"):
        get_norm_stats([str(path)], delta_control=True, chunk_size=CHUNK)


# ---- end to end: train with --delta_control True, deploy on a real-robot episode -----------------------------
def test_delta_control_train_then_deploy_on_a_real_robot_episode(tmp_path, tiny_model_dir, monkeypatch):
    import train_vla
    from aloha_scripts.constants import TASK_CONFIGS
    from evaluate.policy import DexVLAPolicy
    from qwen2_vla.modeling_qwen2_vla import Qwen2VLAActionOutput
    from tests.test_train_vla import TASK, tiny_argv

    episodes = tmp_path / "episodes"
    make_example_episodes(episodes, num_episodes=2, episode_len=EPISODE_LEN, height=56, width=56, sim=False)
    # dataset_dir as a plain string: one directory.
    monkeypatch.setitem(
        TASK_CONFIGS, TASK, {"dataset_dir": str(episodes), "episode_len": EPISODE_LEN, "camera_names": CAMERAS}
    )
    out = tmp_path / "run"
    trainer = train_vla.run(
        tiny_argv(tiny_model_dir, out, delta_control=True, max_steps=2, save_steps=2, chunk_size=CHUNK)
    )
    assert trainer.state.global_step == 2
    stats = NormStats.load(out)
    assert stats.delta_control and stats.chunk_size == CHUNK

    policy = DexVLAPolicy(out, device="cpu", max_new_tokens=2, seed=0)
    path = find_all_hdf5(episodes)[0]
    action, qpos = _recorded(path)
    frames = (0, 1, EPISODE_LEN // 2)

    def observation(t: int) -> dict:
        with h5py.File(path, "r") as root:
            images = {cam: read_frame(root, cam, t) for cam in CAMERAS}
            return {"images": images, "state": root["/observations/qpos"][t], "prompt": read_language(root)}

    for t in frames:
        out_t = policy.infer(observation(t))
        assert out_t["actions"].shape == (CHUNK, 14) and out_t["actions"].dtype == np.float32
        assert np.isfinite(out_t["actions"]).all()

    # The trained checkpoint's statistics with a perfect predictor: the recorded actions come back.
    dataset = _delta_dataset(path, policy.stats)
    target: dict[str, torch.Tensor] = {}

    def recorded_deltas(*args, **kwargs):
        return Qwen2VLAActionOutput(actions=target["chunk"][None].clone(), reasoning=[""])

    monkeypatch.setattr(policy.model, "predict_action", recorded_deltas)
    for t in frames:
        sample = dataset[t]
        target["chunk"] = sample["action"]
        actions = policy.infer(observation(t))["actions"]
        start = chunk_start(t, is_sim=False)
        keep = ~sample["is_pad"].numpy()
        np.testing.assert_allclose(actions[keep], action[start : start + CHUNK], rtol=0, atol=1e-5, err_msg=f"frame {t}")
