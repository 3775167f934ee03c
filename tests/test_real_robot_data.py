"""Data that looks like a real user's: real-robot (sim=False) recordings longer than chunk 50, several
instructions, two dataset directories weighted by ``sample_weights``, through ``load_data`` and the processor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_utils.data_collator import Qwen2VLADataCollatorForSupervisedDataset
from data_utils.hdf5_io import write_episode
from data_utils.sampler import EpisodeSampler
from data_utils.utils import load_data
from qwen2_vla.robot_data_processor import Qwen2VLAProcess
from tests.conftest import CAMERAS

CHUNK = 50  # the reference's chunk size
INSTRUCTIONS = ("fold the towel", "put the cup on the plate", "open the drawer")


def _real_robot_dir(out: Path, num_episodes: int, length: int, seed: int) -> Path:
    """Real-robot episodes: actions lead qpos by one step (as a teleoperated recording), 48x64 frames."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num_episodes):
        qpos = np.cumsum(rng.normal(scale=0.01, size=(length + 1, 14)), axis=0).astype(np.float32)
        images = {cam: rng.integers(0, 255, (length, 48, 64, 3), dtype=np.uint8) for cam in CAMERAS}
        write_episode(
            out / f"episode_{i}.hdf5", qpos[1:], qpos[:-1], np.zeros((length, 14), np.float32), images,
            INSTRUCTIONS[(i + seed) % len(INSTRUCTIONS)], [f"step {t}" for t in range(length)], sim=False,
        )
    return out


@pytest.fixture(scope="module")
def two_real_robot_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("real_robot")
    return _real_robot_dir(root / "main", 3, 70, seed=0), _real_robot_dir(root / "extra", 2, 60, seed=1)


def _data_config():
    data_args = type("DataArgs", (), {"image_size_stable": "(64,48)", "use_reasoning": True, "augment_images": True})()
    return {"data_args": data_args}


def test_real_robot_dirs_with_sample_weights_through_load_data(two_real_robot_dirs, tiny_model_dir):
    from transformers import AutoProcessor, AutoTokenizer

    main, extra = two_real_robot_dirs
    tokenizer, processor = AutoTokenizer.from_pretrained(tiny_model_dir), AutoProcessor.from_pretrained(tiny_model_dir)
    data_args = _data_config()["data_args"]
    data_args.image_size_wrist = "(32,24)"
    process = Qwen2VLAProcess(tokenizer, processor, data_args, CAMERAS)
    train, val, stats, sampler_params = load_data(
        [str(main), str(extra)], None, CAMERAS, 4, 4, CHUNK, config=_data_config(), policy_class="scale_dp_policy",
        sample_weights=[3.0, 1.0], train_ratio=0.67, llava_pythia_process=process, rank0_print=lambda *a: None,
        state_dim=14, action_dim=14,
    )
    # The main directory is split (2 train, 1 val); the extra one trains in full.
    assert [len(lens) for lens in sampler_params["train"]["episode_len_l"]] == [2, 2]
    assert val is not None and len(val.episode_ids) == 1

    # Real-robot pairing: frame t with action[t-1 : t-1+50], padded past the episode's end.
    sample = train[69]  # the main split's first episode, last frame
    assert sample["action"].shape == (CHUNK, 14) and sample["is_pad"].sum() == CHUNK - 2

    # sample_weights 3:1 between the directories, whatever their sizes (140 and 120 steps).
    sampler = EpisodeSampler(**{k: v for k, v in sampler_params["train"].items() if k != "batch_size"}, seed=0,
                             num_samples=4000)
    from_main = np.mean([index < 140 for index in sampler])
    assert from_main == pytest.approx(0.75, abs=0.03)

    # Several instructions reach the prompts; a collated batch mixes them.
    indices = [0, 75, 150, 200]
    features = [train[i] for i in indices]
    prompts = [tokenizer.decode(f["input_ids"][f["labels"] == -100]) for f in features]
    assert len({next(text for text in INSTRUCTIONS if text in p) for p in prompts}) >= 2
    batch = Qwen2VLADataCollatorForSupervisedDataset(processor, None, tokenizer)(features)
    assert batch["actions"].shape == (4, CHUNK, 14) and batch["is_pad"].shape == (4, CHUNK)
    assert batch["image_grid_thw"].shape == (4 * len(CAMERAS), 3) and torch.isfinite(batch["actions"]).all()
