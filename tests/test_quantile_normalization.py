"""Quantile normalisation (q01/q99 to [-1, 1], openpi's rule) and statistics read from LeRobot meta/stats.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import train_vla
from aloha_scripts.constants import TASK_CONFIGS
from data_utils.episode_source import find_episodes, open_episode
from data_utils.hdf5_io import ACTION_KEY, QPOS_KEY, find_all_hdf5
from data_utils.normalization import (
    QUANTILE_EPS,
    STATS_FILE_NAME,
    STD_FLOOR,
    NormStats,
    RunningQuantiles,
    minmax_bounds,
)
from data_utils.utils import episode_delta_counts, get_meta_norm_stats, get_norm_stats, load_data
from evaluate.policy import DexVLAPolicy, postprocess_actions
from qwen2_vla.arguments import DataArguments
from tests.conftest import CAMERAS
from tests.test_train_vla import tiny_argv

FIXTURE = Path(__file__).parent / "data" / "lerobot_fixture"
QUANTILE = {"action_normalization": "quantile", "state_normalization": "quantile"}


def quantile_rule(x: np.ndarray, q01: np.ndarray, q99: np.ndarray) -> np.ndarray:
    """openpi's Normalize._normalize_quantile, written out in float64."""
    q01, q99 = np.float64(q01), np.float64(q99)
    return (np.float64(x) - q01) / (q99 - q01 + QUANTILE_EPS) * 2.0 - 1.0


def random_stats(rng: np.random.Generator, dim: int = 5, **modes: str) -> NormStats:
    low = rng.normal(size=dim)
    return NormStats(
        action_mean=rng.normal(size=dim), action_std=rng.uniform(0.5, 2, dim),
        action_min=low - 3, action_max=low + 3, qpos_mean=rng.normal(size=dim), qpos_std=rng.uniform(0.5, 2, dim),
        action_q01=low - 1, action_q99=low + rng.uniform(0.5, 2, dim),
        qpos_q01=low - 2, qpos_q99=low + rng.uniform(0.5, 2, dim), **modes,
    )


def write_episodes(directory: Path, actions: list[np.ndarray], qpos: list[np.ndarray] | None = None) -> list[str]:
    """Minimal HDF5 episodes (action and qpos only: what the statistics pass reads)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, action in enumerate(actions):
        with h5py.File(directory / f"episode_{i}.hdf5", "w") as file:
            file.attrs["sim"] = True
            file[ACTION_KEY] = action
            file[QPOS_KEY] = action if qpos is None else qpos[i]
    return find_all_hdf5(directory)


# ---- the transform ---------------------------------------------------------------------------------------
def test_quantile_round_trip_and_openpi_formula() -> None:
    stats = random_stats(np.random.default_rng(0), **QUANTILE)
    x = np.random.default_rng(1).normal(scale=3, size=(4, 7, 5)).astype(np.float32)
    normalized = stats.normalize_action(x)
    np.testing.assert_allclose(normalized, quantile_rule(x, stats.action_q01, stats.action_q99), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.unnormalize_action(normalized), x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.unnormalize_state(stats.normalize_state(x)), x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.normalize_state(x), quantile_rule(x, stats.qpos_q01, stats.qpos_q99), atol=1e-5)
    # q01 -> -1, q99 -> 1 (up to the 1e-6 in the denominator), for torch tensors too.
    ends = torch.as_tensor(np.stack([stats.action_q01, stats.action_q99]))
    np.testing.assert_allclose(stats.normalize_action(ends).numpy(), [[-1.0] * 5, [1.0] * 5], atol=1e-5)
    assert stats.normalize_action(ends).dtype == torch.float32
    minmax = NormStats.from_dict({**stats.to_dict(), "action_normalization": "minmax", "state_normalization": "zscore"})
    assert not np.allclose(minmax.normalize_action(x), normalized)


def test_quantile_mode_is_validated() -> None:
    rng = np.random.default_rng(0)
    data = random_stats(rng).to_dict()
    del data["action_q01"], data["action_q99"]
    with pytest.raises(ValueError, match="action_normalization='quantile' needs action_q01 and action_q99"):
        NormStats.from_dict({**data, "action_normalization": "quantile"}, source="ckpt/dataset_stats.json")
    bad = random_stats(rng).to_dict()
    bad["qpos_q99"] = list(bad["qpos_q01"])
    with pytest.raises(ValueError, match="'qpos_q01'/'qpos_q99': q01 must be < q99, at indices \\[0, 1, 2, 3, 4\\]"):
        NormStats.from_dict(bad, source="ckpt/dataset_stats.json")
    bad = random_stats(rng).to_dict()
    bad["action_q01"][2] = float("nan")
    with pytest.raises(ValueError, match="ckpt/dataset_stats.json: .*'action_q01': non-finite .* indices \\[2\\]"):
        NormStats.from_dict(bad, source="ckpt/dataset_stats.json")
    with pytest.raises(ValueError, match="action_normalization must be one of"):
        NormStats.from_dict({**random_stats(rng).to_dict(), "action_normalization": "robust"})


# ---- the streamed pass -------------------------------------------------------------------------------------
def test_running_quantiles_exact_weighted_and_subsampled() -> None:
    rng = np.random.default_rng(0)
    rows, counts = rng.normal(size=(600, 3)), rng.integers(0, 6, 600)
    exact = RunningQuantiles()
    for part in np.array_split(np.arange(600), 7):
        exact.update(rows[part], counts[part])
    qs = (0.0, 0.01, 0.37, 0.99, 1.0)
    repeated = np.repeat(rows.astype(np.float32), counts, axis=0).astype(np.float64)
    assert exact.exact
    np.testing.assert_array_equal(exact.quantiles(qs), np.quantile(repeated, qs, axis=0))
    # Over the bound: a seeded uniform subsample, reproducible, near the truth.
    big = rng.normal(size=(60_000, 2))
    estimates = []
    for seed in (0, 0, 1):
        sampled = RunningQuantiles(max_rows=5_000, seed=seed)
        for part in np.array_split(big, 40):
            sampled.update(part)
        assert not sampled.exact and sampled.rows_seen == 60_000
        estimates.append(sampled.quantiles((0.01, 0.99)))
    np.testing.assert_array_equal(estimates[0], estimates[1])
    assert not np.array_equal(estimates[0], estimates[2])
    np.testing.assert_allclose(estimates[0], np.quantile(big, (0.01, 0.99), axis=0), atol=0.15)


def test_one_outlier_barely_moves_quantile_scaling_but_squashes_minmax(tmp_path: Path) -> None:
    clean = np.linspace(-1, 1, 1001)[:, None]
    with_outlier = np.concatenate([clean, [[1000.0]]])
    probe = np.array([[-1.0], [0.5], [1.0]])
    results = {}
    for name, data in (("clean", clean), ("outlier", with_outlier)):
        paths = write_episodes(tmp_path / name, [data])
        results[name] = {
            "minmax": get_norm_stats(paths, chunk_size=4)[0].normalize_action(probe)[:, 0],
            "quantile": get_norm_stats(paths, chunk_size=4, **QUANTILE)[0].normalize_action(probe)[:, 0],
        }
    # Without the outlier both map [-1, 1] onto about [-1, 1] (q01/q99 = -0.98/0.98 push the ends past 1).
    np.testing.assert_allclose(results["clean"]["minmax"], [-1, 0.5, 1], atol=1e-3)
    np.testing.assert_allclose(results["clean"]["quantile"], [-1 / 0.98, 0.5 / 0.98, 1 / 0.98], atol=1e-3)
    # One value of 1000 among 1002: min-max squeezes all the real data into 0.4% of the range ...
    squashed = results["outlier"]["minmax"]
    assert squashed[2] - squashed[0] == pytest.approx(2 * 2 / 1001, rel=1e-3) and squashed[1] < -0.99
    # ... quantile scaling moves by ~0.002 (the 99th percentile shifts by one row's spacing).
    q01, q99 = np.quantile(with_outlier[:, 0], (0.01, 0.99))
    np.testing.assert_allclose(results["outlier"]["quantile"], quantile_rule(probe[:, 0], q01, q99), atol=1e-5)
    assert np.abs(results["outlier"]["quantile"] - results["clean"]["quantile"]).max() < 0.005


def test_constant_and_nearly_constant_dims_fall_back_to_minmax_bounds(tmp_path: Path) -> None:
    action = np.zeros((300, 3))
    action[:, 0] = np.linspace(0, 1, 300)
    action[:, 1] = 5000.0  # constant, large: float32 spacing exceeds the margin
    action[-1, 2] = 1.0  # a gripper that moves once: q01 == q99 == 0
    stats, _ = get_norm_stats(write_episodes(tmp_path / "eps", [action]), chunk_size=4, **QUANTILE)
    lo, hi = minmax_bounds(action.min(axis=0), action.max(axis=0))
    np.testing.assert_array_equal(stats.action_q01[1:], lo[1:])
    np.testing.assert_array_equal(stats.action_q99[1:], hi[1:])
    assert stats.action_q01[0] == pytest.approx(np.quantile(action[:, 0], 0.01))
    assert stats.normalize_action(action[-1:])[0, 2] <= 1.0  # not blown up by a 1e-6 wide scale
    assert np.isfinite(stats.normalize_action(action)).all()


def test_delta_control_quantiles_weigh_deltas_as_training_draws_them(episodes_dir: Path) -> None:
    paths = find_all_hdf5(episodes_dir)
    stats, _ = get_norm_stats(paths, delta_control=True, chunk_size=8, **QUANTILE)
    rows, counts = [], []
    for path in paths:
        with open_episode(path) as episode:
            r, c = episode_delta_counts(
                np.asarray(episode.action(), np.float64), np.asarray(episode.qpos(), np.float32), episode.is_sim, 8
            )
        rows.append(r)
        counts.append(c)
    repeated = np.repeat(np.concatenate(rows).astype(np.float32), np.concatenate(counts), axis=0).astype(np.float64)
    assert (np.concatenate(counts) != 1).any()  # the weights matter here
    np.testing.assert_allclose(stats.action_q01, np.quantile(repeated, 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats.action_q99, np.quantile(repeated, 0.99, axis=0), rtol=1e-6)
    unweighted = np.quantile(np.concatenate(rows), 0.99, axis=0)
    assert not np.allclose(stats.action_q99, unweighted, rtol=1e-6)


# ---- dataset_stats.json ------------------------------------------------------------------------------------
def test_saved_stats_carry_the_modes_and_a_reload_applies_them(episodes_dir: Path, tmp_path: Path) -> None:
    stats, _ = get_norm_stats(find_all_hdf5(episodes_dir), chunk_size=8, action_normalization="quantile")
    path = stats.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["format_version"] == 2 and data["action_normalization"] == "quantile"
    assert data["state_normalization"] == "zscore" and data["stats_source"] == "data"
    assert len(data["action_q01"]) == 14 and "qpos_q01" not in data  # quantiles only where a mode needs them
    loaded = NormStats.load(tmp_path)
    x = np.random.default_rng(0).normal(size=(3, 14)).astype(np.float32)
    np.testing.assert_allclose(loaded.normalize_action(x), quantile_rule(x, data["action_q01"], data["action_q99"]),
                               atol=1e-5)
    np.testing.assert_allclose(loaded.normalize_state(x), (x - loaded.qpos_mean) / loaded.qpos_std, rtol=1e-6)


def test_old_format_file_loads_as_minmax_and_zscore(episodes_dir: Path, tmp_path: Path) -> None:
    stats, _ = get_norm_stats(find_all_hdf5(episodes_dir), chunk_size=8)
    data = stats.to_dict()
    for key in ("action_normalization", "state_normalization", "stats_source"):
        del data[key]
    data["format_version"] = 1
    (tmp_path / STATS_FILE_NAME).write_text(json.dumps(data))
    old = NormStats.load(tmp_path)
    assert (old.action_normalization, old.state_normalization, old.format_version) == ("minmax", "zscore", 1)
    x = np.random.default_rng(0).normal(size=(3, 14)).astype(np.float32)
    lo, hi = np.asarray(data["action_min"], np.float32), np.asarray(data["action_max"], np.float32)
    np.testing.assert_allclose(old.normalize_action(x), (x - lo) / (hi - lo) * 2 - 1, rtol=1e-6)
    assert json.loads(old.save(tmp_path / "resaved").read_text())["action_normalization"] == "minmax"


# ---- meta/stats.json -----------------------------------------------------------------------------------------
def meta_values(root: Path, key: str, name: str) -> np.ndarray:
    return np.asarray(json.loads((root / "meta" / "stats.json").read_text())[key][name], dtype=np.float64)


def test_meta_source_equals_the_fixture_meta_stats() -> None:
    refs = find_episodes(FIXTURE)
    config = {"data_args": DataArguments(norm_stats_source="dataset_meta", **QUANTILE)}
    _, _, stats, _ = load_data([str(FIXTURE)], None, CAMERAS, 2, 2, 8, config=config, rank0_print=lambda *a: None)
    assert stats.stats_source == "dataset_meta" and stats.num_steps == 75 and stats.num_episodes == len(refs)
    for ours, key in (("action", "action"), ("qpos", "observation.state")):
        np.testing.assert_array_equal(getattr(stats, f"{ours}_mean"), meta_values(FIXTURE, key, "mean").astype(np.float32))
        np.testing.assert_array_equal(
            getattr(stats, f"{ours}_std"), np.maximum(meta_values(FIXTURE, key, "std"), STD_FLOOR).astype(np.float32)
        )
        for q in ("q01", "q99"):
            np.testing.assert_array_equal(getattr(stats, f"{ours}_{q}"), meta_values(FIXTURE, key, q).astype(np.float32))
    lo, hi = minmax_bounds(meta_values(FIXTURE, "action", "min"), meta_values(FIXTURE, "action", "max"))
    np.testing.assert_array_equal(stats.action_min, lo)
    np.testing.assert_array_equal(stats.action_max, hi)
    # The data pass disagrees on the quantiles: LeRobot's are frame-weighted averages of per-episode ones.
    ours, _ = get_norm_stats(refs, chunk_size=8, **QUANTILE)
    assert ours.action_q01[0] == pytest.approx(0.271875) and stats.action_q01[0] == pytest.approx(17.864583, rel=1e-6)


def test_meta_source_combines_roots_by_frame_counts(tmp_path: Path) -> None:
    shifted = tmp_path / "shifted"
    shutil.copytree(FIXTURE, shifted)
    meta = json.loads((shifted / "meta" / "stats.json").read_text())
    for name in ("mean", "min", "max", "q01", "q99"):
        meta["action"][name] = (np.asarray(meta["action"][name]) + 10).tolist()
    meta["action"]["count"] = [225]  # three times the fixture's 75 frames
    (shifted / "meta" / "stats.json").write_text(json.dumps(meta))
    refs = find_episodes(FIXTURE) + find_episodes(shifted)
    stats, lengths = get_meta_norm_stats([str(FIXTURE), str(shifted)], refs, **QUANTILE)
    assert lengths == [20, 25, 30] * 2
    mean, std = meta_values(FIXTURE, "action", "mean"), meta_values(FIXTURE, "action", "std")
    np.testing.assert_allclose(stats.action_mean, mean + 7.5, rtol=1e-6)  # (75 * m + 225 * (m + 10)) / 300
    np.testing.assert_allclose(stats.action_std, np.sqrt(std**2 + 0.25 * 0.75 * 100), rtol=1e-6)
    np.testing.assert_allclose(stats.action_q01, meta_values(FIXTURE, "action", "q01") + 7.5, rtol=1e-6)
    np.testing.assert_allclose(stats.action_max, meta_values(FIXTURE, "action", "max") + 10 + 1e-4, rtol=1e-6)
    np.testing.assert_allclose(stats.action_min, meta_values(FIXTURE, "action", "min") - 1e-4, atol=1e-6)


def test_meta_source_refuses_hdf5_dirs_and_delta_control(episodes_dir: Path) -> None:
    config = {"data_args": DataArguments(norm_stats_source="dataset_meta")}
    with pytest.raises(ValueError, match=f"{episodes_dir} is not a LeRobot dataset root .*--norm_stats_source data"):
        load_data([str(FIXTURE), str(episodes_dir)], None, CAMERAS, 2, 2, 8, config=config, rank0_print=print)
    with pytest.raises(ValueError, match="delta_control=True: meta/stats.json holds statistics of absolute actions"):
        get_meta_norm_stats([str(FIXTURE)], find_episodes(FIXTURE), delta_control=True)
    with pytest.raises(ValueError, match="norm_stats_source='dataset_meta' with delta_control=True"):
        DataArguments(norm_stats_source="dataset_meta", delta_control=True)


# ---- training and inference -----------------------------------------------------------------------------------
def test_quantile_run_on_the_fixture_and_policy_unnormalizes_by_quantiles(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = "pytest_lerobot_quantile"
    monkeypatch.setitem(
        TASK_CONFIGS, task, {"dataset_dir": [str(FIXTURE)], "episode_len": 30, "camera_names": CAMERAS}
    )
    out = tmp_path / "run"
    trainer = train_vla.run(tiny_argv(tiny_model_dir, out, task_name=task, max_steps=1, save_steps=1, **QUANTILE))
    assert trainer.state.global_step == 1
    saved = NormStats.load(out)
    assert (saved.action_normalization, saved.state_normalization) == ("quantile", "quantile")
    expected, _ = get_norm_stats(find_episodes(FIXTURE), chunk_size=8, **QUANTILE)
    np.testing.assert_array_equal(saved.action_q99, expected.action_q99)
    np.testing.assert_array_equal(saved.qpos_q01, expected.qpos_q01)
    # Inference reads the mode from the checkpoint: model outputs map back by the quantile rule.
    policy = DexVLAPolicy(out, max_new_tokens=0)
    normalized = np.random.default_rng(0).uniform(-1.2, 1.2, size=(2, 8, 14)).astype(np.float32)
    states = np.random.default_rng(1).normal(size=(2, 14)).astype(np.float32)
    span = saved.action_q99.astype(np.float64) - saved.action_q01 + QUANTILE_EPS
    np.testing.assert_allclose(
        policy.postprocess_actions(normalized, states), (normalized + 1) / 2 * span + saved.action_q01, rtol=1e-5
    )
    np.testing.assert_allclose(
        policy.stats.normalize_state(states), quantile_rule(states, saved.qpos_q01, saved.qpos_q99), atol=1e-5
    )
    # delta_control checkpoints integrate the quantile-unnormalised deltas onto the measured state.
    delta = NormStats.from_dict({**saved.to_dict(), "delta_control": True})
    deltas = (normalized + 1) / 2 * span + saved.action_q01
    np.testing.assert_allclose(
        postprocess_actions(normalized, states, delta), states[:, None] + np.cumsum(deltas, axis=1), rtol=1e-4,
        atol=1e-3,
    )


def test_resume_check_compares_modes_and_quantiles(episodes_dir: Path, tmp_path: Path) -> None:
    paths = find_all_hdf5(episodes_dir)
    saved, _ = get_norm_stats(paths, chunk_size=8, **QUANTILE)
    saved.save(tmp_path)
    train_vla.check_resumed_stats(str(tmp_path), get_norm_stats(paths, chunk_size=8, **QUANTILE)[0])
    with pytest.raises(ValueError, match="action_normalization quantile in the checkpoint, minmax now"):
        train_vla.check_resumed_stats(str(tmp_path), get_norm_stats(paths, chunk_size=8, state_normalization="quantile")[0])
    moved = saved.to_dict()
    moved["qpos_q99"][4] += 1.0
    (tmp_path / STATS_FILE_NAME).write_text(json.dumps(moved))
    with pytest.raises(ValueError, match=r"qpos_q99\[4\]"):
        train_vla.check_resumed_stats(str(tmp_path), saved)
