"""The first-chunk probe (``scripts/sim_localization_probe.py``) on the tiny evaluation checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scripts.sim_localization_probe import main, probe, recorded_actions


def test_probe_compares_with_the_blind_guess_and_measures_the_cameras(
    tiny_vla_ckpt: Path, episodes_dir: Path, tmp_path: Path
) -> None:
    from data_utils.hdf5_io import find_all_hdf5

    files = [Path(f) for f in find_all_hdf5(episodes_dir)]
    held_out, training = files[:2], files[2:]
    result = probe(tiny_vla_ckpt, held_out, training, steps=[0, 5])
    assert [r["step"] for r in result["rows"]] == [0, 5]
    for row in result["rows"]:
        assert row["episodes"] == 2 and row["chunk"] > 0
        assert row["ratio_all"] == pytest.approx(row["policy_all"] / row["blind_all"])
        # The checkpoint's chunks depend on its images (conftest), so swapping frames moves them.
        assert row["image_effect"] > 0
    # The blind guess is the training episodes' mean: exact when the only training episode is the held-out one.
    own = probe(tiny_vla_ckpt, held_out[:1], held_out[:1], steps=[0])["rows"][0]
    assert own["blind_all"] == 0.0
    assert own["image_effect"] is None  # one episode: no other frames to swap in (not a misleading 0)
    chunk = recorded_actions(held_out[0], 28, 8)  # past the 30-step end: the last action repeats
    assert chunk.shape[0] == 8 and np.array_equal(chunk[2:], np.repeat(chunk[1:2], 6, axis=0))

    out = tmp_path / "probe.json"
    assert main(["--ckpt", str(tiny_vla_ckpt), "--episodes", *map(str, held_out), "--train_episodes",
                 *map(str, training), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["step"] == 0
    with pytest.raises(SystemExit):  # a held-out episode that is also a training one is refused
        main(["--ckpt", str(tiny_vla_ckpt), "--episodes", str(files[0]), "--train_episodes", *map(str, files)])
