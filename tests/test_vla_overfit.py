"""The tiny VLA learns from its inputs: overfit on one example episode, it predicts that episode's chunks far
better than any constant chunk can.

The training loop is conftest's ``overfit_vla_ckpt`` (a plain optimiser loop over the training processor,
dataset and collator, ``evaluate.testing.overfit_checkpoint``), shared with the replay test; this file checks
its losses and its predictions through the evaluation policy.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import transformers

from data_utils.hdf5_io import find_all_hdf5, read_frame, read_language
from evaluate.policy import DexVLAPolicy
from evaluate.testing import episode_chunks, mean_chunk, read_overfit_log
from tests.conftest import OVERFIT_STEPS

transformers.logging.set_verbosity_error()
WINDOW = 25  # steps averaged at each end of the run: single batches are noisy (random diffusion timesteps)


@pytest.mark.slow  # builds conftest's shared overfit checkpoint when first asked for it
def test_losses_fall(overfit_vla_ckpt):
    log = read_overfit_log(overfit_vla_ckpt)
    assert all(len(values) == OVERFIT_STEPS for values in log.values())
    for key in ("action_loss", "llm_loss", "loss"):
        first, last = np.mean(log[key][:WINDOW]), np.mean(log[key][-WINDOW:])
        assert np.isfinite(log[key]).all() and last < 0.2 * first, (key, first, last)


@pytest.mark.slow
def test_overfit_policy_predicts_the_episode_better_than_any_constant_chunk(overfit_vla_ckpt, episodes_dir):
    episode = find_all_hdf5(episodes_dir)[0]
    policy = DexVLAPolicy(overfit_vla_ckpt, device="cpu", max_new_tokens=12, seed=0)
    with h5py.File(episode, "r") as root:
        cameras, length = policy.camera_names, root["/action"].shape[0]
        observations = [
            {"images": {cam: read_frame(root, cam, t) for cam in cameras}, "state": root["/observations/qpos"][t],
             "prompt": read_language(root)}
            for t in range(length)
        ]
    predicted = np.stack([out["actions"] for out in policy.infer_batch(observations)])
    predicted = policy.stats.normalize_action(predicted)  # (T, chunk, action_dim), what the model outputs
    targets, valid = episode_chunks(policy.stats, episode)
    mse = ((predicted - targets) ** 2)[valid].mean()
    # The episode's mean chunk is the least-squares best of all predictors that ignore their inputs.
    best_constant = mean_chunk(targets, valid)
    mean_chunk_mse = ((best_constant[None] - targets) ** 2)[valid].mean()
    zero_mse = (targets**2)[valid].mean()
    print(f"overfit: MSE {mse:.3f}, mean-chunk MSE {mean_chunk_mse:.3f}, all-zero MSE {zero_mse:.3f}")
    assert mean_chunk_mse > 0.1  # the episode's chunks differ: a model that ignores its inputs can't score well
    assert mse < 0.5 * mean_chunk_mse < 0.5 * zero_mse
