"""The head-only oracle check (``scripts/sim_head_oracle.py``) at toy sizes on the example episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scripts.sim_head_oracle import OracleData, first_chunk_errors, load_episodes, main, train_head


def _stats_file(episodes, tmp_path: Path) -> Path:
    from data_utils.normalization import NormStats

    actions = np.concatenate([a for a, _ in episodes])
    qpos = np.concatenate([q for _, q in episodes])
    stats = NormStats(
        action_mean=actions.mean(0), action_std=actions.std(0) + 1e-2, action_min=actions.min(0) - 1e-2,
        action_max=actions.max(0) + 1e-2, qpos_mean=qpos.mean(0), qpos_std=qpos.std(0) + 1e-2,
    )
    return stats.save(tmp_path / "dataset_stats.json")


def test_oracle_head_trains_and_is_probed_at_the_first_frame(episodes_dir: Path, tmp_path: Path, capsys) -> None:
    from data_utils.hdf5_io import find_all_hdf5
    from data_utils.normalization import NormStats

    files = sorted(Path(f) for f in find_all_hdf5(episodes_dir))
    train, held_out = load_episodes(files[:2]), load_episodes(files[2:])
    stats = NormStats.load(_stats_file(train, tmp_path))
    data = OracleData(train, stats, chunk=8, oracle_step=5, seed=0)
    batch = data.batch(3)
    assert batch["actions"].shape == (3, 8, train[0][0].shape[1]) and batch["hidden_states"].shape == (3, 14)
    # The condition is the episode's normalised action at the oracle step: a function of the episode only.
    assert np.allclose(data.oracle(train[0][0]), stats.normalize_action(train[0][0][5]))
    head = train_head(data, "sample", steps=3, batch_size=4, lr=1e-3, seed=0)
    assert head.config.prediction_type == "sample" and not head.training
    result = first_chunk_errors(head, data, held_out, train, seed=0)
    assert result["blind_mse"] > 0 and result["ratio"] == pytest.approx(result["policy_mse"] / result["blind_mse"])
    assert result["condition_effect"] > 0  # another episode's oracle moves the chunk

    stats_path = tmp_path / "dataset_stats.json"
    args = ["--demos", *map(str, files[:2]), "--held_out", *map(str, files[2:]), "--stats", str(stats_path),
            "--steps", "2", "--chunk", "8", "--oracle_step", "5", "--batch_size", "2"]
    assert main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| epsilon") or line.startswith("| sample")]
    assert len(rows) == 2
    with pytest.raises(SystemExit):  # a held-out episode that is also a training one is refused
        main(["--demos", *map(str, files), "--held_out", str(files[0]), "--stats", str(stats_path)])
