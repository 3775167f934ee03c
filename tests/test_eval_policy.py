"""Policy wrapper, action strategies and rate control of evaluate/ on the tiny offline model."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch
import transformers

from data_utils.dataset import EpisodicDataset
from data_utils.hdf5_io import episode_length, find_all_hdf5, read_frame, read_language
from data_utils.normalization import NormStats
from evaluate.action_strategies import ChunkExecution, TemporalAggregation, make_strategy
from evaluate.inference_config import EVAL_CONFIG_FILE, load_inference_config, save_eval_config
from evaluate.policy import DexVLAPolicy, ObservationError, resolve_dtype
from qwen2_vla.modeling_qwen2_vla import Qwen2VLAActionOutput
from tests.conftest import CAMERAS, EVAL_CHUNK

transformers.logging.set_verbosity_error()
CHUNK = EVAL_CHUNK




@pytest.fixture(scope="module")
def ckpt(tiny_vla_ckpt):
    return tiny_vla_ckpt


@pytest.fixture(scope="module")
def policy(ckpt):
    return DexVLAPolicy(ckpt, device="cpu", max_new_tokens=4, seed=0)


def observation(path, t: int, prompt: str | None = None) -> dict:
    """The raw observation of step ``t`` of a recorded episode (what a robot would send)."""
    with h5py.File(path, "r") as root:
        return {
            "images": {cam: read_frame(root, cam, t) for cam in CAMERAS},
            "state": root["/observations/qpos"][t],
            "prompt": read_language(root) if prompt is None else prompt,
        }


# ---- the wrapper -------------------------------------------------------------------------------------
def test_infer_shapes_reasoning_and_metadata(policy, episodes_dir):
    path = find_all_hdf5(episodes_dir)[0]
    out = policy.infer(observation(path, 3))
    assert out["actions"].shape == (CHUNK, 14) and out["actions"].dtype == np.float32
    assert np.isfinite(out["actions"]).all()
    assert isinstance(out["reasoning"], str) and out["policy_timing"]["infer_ms"] > 0
    meta = policy.metadata
    assert meta["camera_names"] == CAMERAS and meta["chunk_size"] == CHUNK
    assert meta["state_dim"] == meta["action_dim"] == 14 and meta["image_size_stable"] == [56, 56]
    assert meta["dtype"] == "float32" and meta["device"] == "cpu"
    # The same observation gives the same chunk (fixed DDIM noise); images may also come channel-first.
    chw = observation(path, 3)
    chw["images"] = {cam: np.ascontiguousarray(img.transpose(2, 0, 1)) for cam, img in chw["images"].items()}
    np.testing.assert_array_equal(policy.infer(chw)["actions"], out["actions"])


def test_batch_equals_one_by_one(policy, episodes_dir):
    path = find_all_hdf5(episodes_dir)[1]
    # Different prompts give prompts of different lengths: the batch is left padded.
    observations = [observation(path, 0), observation(path, 11, "move both arms"), observation(path, 25)]
    batched = policy.infer_batch(observations)
    single = [policy.infer(obs) for obs in observations]
    for b, s in zip(batched, single, strict=True):
        np.testing.assert_allclose(b["actions"], s["actions"], rtol=0, atol=1e-5)
        assert b["reasoning"] == s["reasoning"]


# ---- the actions depend on the observation ----------------------------------------------------------
# The checkpoint's head is not at its adaLN-Zero start (evaluate.testing.build_tiny_checkpoint): its actions are
# a function of the observation, not of the fixed DDIM noise alone. Changes are measured in normalised action
# units (the model's [-1, 1] output scale) as a mean |difference|; repeating an observation gives exactly the same
# chunk, and float32 reorderings (batching) move it by < 1e-5, so CHANGE is 100x above numerical noise.
CHANGE = 1e-3


def normalized_change(policy: DexVLAPolicy, a: np.ndarray, b: np.ndarray) -> float:
    """Mean |difference| of two raw action chunks in the model's normalised units."""
    return float(np.abs(policy.stats.normalize_action(a) - policy.stats.normalize_action(b)).mean())


@pytest.mark.parametrize("camera", CAMERAS)
def test_actions_change_when_one_camera_image_changes(policy, episodes_dir, camera):
    first, second = find_all_hdf5(episodes_dir)[:2]
    obs = observation(first, 3)
    base = policy.infer(obs)["actions"]
    np.testing.assert_array_equal(policy.infer(observation(first, 3))["actions"], base)  # no noise of its own
    other = observation(second, 20)["images"][camera]  # that camera in another episode (another square, gripper)
    assert not np.array_equal(other, obs["images"][camera])
    obs["images"][camera] = other
    change = normalized_change(policy, policy.infer(obs)["actions"], base)
    assert change > CHANGE, f"replacing {camera}'s image moved the actions by only {change:.2e}"


def test_actions_change_when_the_state_changes(policy, episodes_dir):
    path = find_all_hdf5(episodes_dir)[0]
    obs = observation(path, 3)
    base = policy.infer(obs)["actions"]
    obs["state"] = observation(path, 20)["state"]
    change = normalized_change(policy, policy.infer(obs)["actions"], base)
    assert change > CHANGE, f"another state moved the actions by only {change:.2e}"


def test_actions_change_when_the_prompt_changes(policy, episodes_dir):
    obs = observation(find_all_hdf5(episodes_dir)[0], 3)
    base = policy.infer(obs)["actions"]
    assert obs["prompt"] != "pick up the cube and hand it over"
    obs["prompt"] = "pick up the cube and hand it over"
    change = normalized_change(policy, policy.infer(obs)["actions"], base)
    assert change > CHANGE, f"another prompt moved the actions by only {change:.2e}"


@pytest.mark.parametrize("pair", [("cam_left_wrist", "cam_right_wrist"), ("cam_high", "cam_left_wrist")])
def test_swapping_two_cameras_changes_the_actions(policy, episodes_dir, pair):
    obs = observation(find_all_hdf5(episodes_dir)[1], 10)
    a, b = pair
    assert not np.array_equal(obs["images"][a], obs["images"][b])  # a frame where the two views differ
    base = policy.infer(obs)["actions"]
    obs["images"][a], obs["images"][b] = obs["images"][b], obs["images"][a]
    change = normalized_change(policy, policy.infer(obs)["actions"], base)
    assert change > CHANGE, f"swapping {a} and {b} moved the actions by only {change:.2e}"


def test_channel_first_and_channel_last_images_give_identical_actions(policy, episodes_dir):
    obs = observation(find_all_hdf5(episodes_dir)[1], 10)
    base = policy.infer(obs)["actions"]
    chw = {**obs, "images": {cam: np.ascontiguousarray(img.transpose(2, 0, 1)) for cam, img in obs["images"].items()}}
    np.testing.assert_array_equal(policy.infer(chw)["actions"], base)
    mixed = {**obs, "images": {**obs["images"], "cam_left_wrist": chw["images"]["cam_left_wrist"]}}
    np.testing.assert_array_equal(policy.infer(mixed)["actions"], base)


def test_cameras_reach_the_model_in_the_checkpoint_order(policy, episodes_dir, monkeypatch):
    """Each camera a uniform grey of its own level, sent in reversed dict order: the model's image blocks
    (one per camera, ``image_grid_thw`` patches each) must come in ``dataset_stats.json``'s camera order."""
    levels = {cam: 40 + 80 * i for i, cam in enumerate(policy.camera_names)}  # rising in the checkpoint order
    obs = observation(find_all_hdf5(episodes_dir)[0], 0)
    obs["images"] = {cam: np.full_like(obs["images"][cam], levels[cam]) for cam in reversed(policy.camera_names)}
    seen = {}
    predict = policy.model.predict_action

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return predict(*args, **kwargs)

    monkeypatch.setattr(policy.model, "predict_action", spy)
    policy.infer(obs)
    patches = seen["image_grid_thw"].prod(dim=1).tolist()
    assert len(patches) == len(CAMERAS)
    block_means = [block.float().mean().item() for block in seen["pixel_values"].split(patches)]
    assert block_means == sorted(block_means) and len(set(block_means)) == len(CAMERAS), block_means


@pytest.mark.slow  # builds conftest's shared overfit checkpoint when first asked for it
def test_batch_rows_that_stop_generating_at_different_steps(overfit_vla_ckpt, episodes_dir, monkeypatch):
    """The overfit checkpoint reasons differently (and at different lengths) in the three thirds of its episode:
    in a batch, rows finish generating at different steps, and each must still get its own answer span."""
    policy = DexVLAPolicy(overfit_vla_ckpt, device="cpu", max_new_tokens=16, seed=0)
    path = find_all_hdf5(episodes_dir)[0]
    observations = [observation(path, t) for t in (0, 12, 25)]
    outputs = []
    predict = policy.model.predict_action

    def spy(*args, **kwargs):
        outputs.append(predict(*args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(policy.model, "predict_action", spy)
    batched = policy.infer_batch(observations)
    lengths = outputs[0].answer_mask.sum(dim=1).tolist()
    assert len(set(lengths)) == len(observations), lengths  # every row stopped at its own step
    assert max(lengths) < policy.max_new_tokens  # ... and all of them stopped by themselves
    for row, obs in enumerate(observations):
        alone = policy.infer(obs)
        assert outputs[-1].answer_mask.sum().item() == lengths[row]
        assert batched[row]["reasoning"] == alone["reasoning"]
        np.testing.assert_allclose(batched[row]["actions"], alone["actions"], rtol=0, atol=1e-5)
    assert len({out["reasoning"] for out in batched}) == len(observations)


def test_camera_resolution_batch_equals_one_by_one(camera_vla_ckpt, camera_episodes_dir, monkeypatch):
    """480x640 frames for a policy trained at (320, 240) stable / (160, 120) wrist with Qwen2-VL-2B's pixel budget:
    every camera reaches the model at the patch grid of its training size, and a batch (left padded: prompts of
    different lengths) gives the actions of its observations one by one."""
    from tests.conftest import CAMERA_HW, STABLE_SIZE, WRIST_SIZE
    from tests.test_vla_model import expected_grid

    policy = DexVLAPolicy(camera_vla_ckpt, device="cpu", max_new_tokens=4, seed=0)
    path = find_all_hdf5(camera_episodes_dir)[0]
    observations = [observation(path, 0), observation(path, 7, "move both arms"), observation(path, 19)]
    assert observations[0]["images"]["cam_high"].shape == (*CAMERA_HW, 3)
    processor = policy.process.multimodal_processor
    grids = [expected_grid(processor, WRIST_SIZE if "wrist" in cam else STABLE_SIZE) for cam in CAMERAS]
    seen = []
    predict = policy.model.predict_action

    def spy(*args, **kwargs):
        seen.append(kwargs["image_grid_thw"].tolist())
        return predict(*args, **kwargs)

    monkeypatch.setattr(policy.model, "predict_action", spy)
    batched = policy.infer_batch(observations)
    assert seen[0] == grids * len(observations)
    for obs, together in zip(observations, batched, strict=True):
        alone = policy.infer(obs)
        np.testing.assert_allclose(together["actions"], alone["actions"], rtol=0, atol=1e-5)
        assert together["reasoning"] == alone["reasoning"]
    assert seen[1:] == [grids] * len(observations)
    # The three observations are told apart (a batch that mixed up rows would not pass the comparison above).
    assert normalized_change(policy, batched[0]["actions"], batched[2]["actions"]) > CHANGE


def test_unnormalisation_is_the_exact_inverse_of_the_dataset(policy, episodes_dir, monkeypatch):
    path = find_all_hdf5(episodes_dir)[0]
    dataset = EpisodicDataset(
        [path], CAMERAS, policy.stats, [0], [episode_length(path)], CHUNK, augment_images=False,
        rank0_print=lambda *a: None,
    )
    t = 5
    sample = dataset[t]  # what training saw: state z-scored, action chunk in [-1, 1]
    raw = dataset.load_raw_step(0, t)
    seen = {}

    def fake_predict_action(input_ids, attention_mask, states, **kwargs):
        seen["states"] = states.clone()
        return Qwen2VLAActionOutput(actions=sample["action"][None].clone(), reasoning=["r"])

    monkeypatch.setattr(policy.model, "predict_action", fake_predict_action)
    out = policy.infer(observation(path, t))
    # The model got the dataset's normalised state, and its normalised chunk came back in raw units.
    torch.testing.assert_close(seen["states"][0], sample["state"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["actions"], raw["action"], rtol=0, atol=1e-5)
    x = np.random.default_rng(0).uniform(-3, 3, size=(4, 14)).astype(np.float32)
    np.testing.assert_allclose(policy.stats.unnormalize_action(policy.stats.normalize_action(x)), x, atol=1e-5)


def test_delta_control_integrates_onto_the_state(policy):
    stats = policy.stats
    delta_stats = NormStats(**{**stats.__dict__, "delta_control": True})
    deltas = np.random.default_rng(1).normal(size=(2, CHUNK, 14)).astype(np.float32) * 0.01
    state = np.random.default_rng(2).normal(size=(2, 14)).astype(np.float32)
    original = policy.stats
    try:
        policy.stats = delta_stats
        actions = policy.postprocess_actions(delta_stats.normalize_action(deltas), state)
    finally:
        policy.stats = original
    np.testing.assert_allclose(actions, state[:, None] + np.cumsum(deltas, axis=1), atol=1e-5)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda o: o["images"].pop("cam_left_wrist"), "images.cam_left_wrist"),
        (lambda o: o.__setitem__("state", np.zeros(7)), "state"),
        (lambda o: o["images"].__setitem__("cam_high", o["images"]["cam_high"].astype(np.float32)), "images.cam_high"),
        (lambda o: o["images"].__setitem__("cam_high", np.zeros((56, 56), np.uint8)), "images.cam_high"),
        (lambda o: o.__setitem__("state", np.array(["a"] * 14)), "state"),
        (lambda o: o.pop("prompt"), "prompt"),
        (lambda o: o.pop("images"), "images"),
    ],
)
def test_malformed_observations_name_the_field(policy, episodes_dir, mutate, field):
    obs = observation(find_all_hdf5(episodes_dir)[0], 0)
    mutate(obs)
    with pytest.raises(ObservationError) as err:
        policy.infer(obs)
    assert err.value.field == field and repr(field) in str(err.value)


def test_image_sizes_come_from_the_checkpoint(ckpt, tmp_path):
    assert load_inference_config(ckpt).image_size_stable == (56, 56)
    assert load_inference_config(ckpt, image_size_stable="(64,48)").image_size_stable == (64, 48)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"model_type": "qwen2_vla"}))
    with pytest.raises(ValueError, match=EVAL_CONFIG_FILE):
        load_inference_config(bare)
    (bare / "config.json").write_text(json.dumps({"image_size_stable": "(32,24)", "image_size_wrist": "(16,12)"}))
    config = load_inference_config(bare)
    assert (config.image_size_stable, config.image_size_wrist) == ((32, 24), (16, 12))
    save_eval_config(bare, (40, 30), "(20,10)")  # a file added to an older checkpoint wins over its config
    config = load_inference_config(bare)
    assert (config.image_size_stable, config.image_size_wrist) == ((40, 30), (20, 10))
    assert EVAL_CONFIG_FILE in config.source


def test_dtype_defaults():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", torch.device("cpu"))


# ---- action strategies -------------------------------------------------------------------------------
def test_temporal_aggregation_hand_computed():
    agg = TemporalAggregation(k=0.5)
    chunks = {0: [1.0, 2.0, 3.0], 1: [10.0, 20.0, 30.0], 2: [100.0, 200.0, 300.0]}
    got = []
    for t in range(5):
        if t in chunks:
            assert agg.needs_query(t)
            agg.add_chunk(t, np.array(chunks[t])[:, None])
        got.append(float(agg.action(t)[0]))
    w1, w2 = math.exp(-0.5), math.exp(-1.0)  # 0.60653066, 0.36787944
    expected = [
        1.0,  # only the chunk of step 0
        (2.0 + 10.0 * w1) / (1 + w1),  # 5.0203...: the oldest chunk weighs most
        (3.0 + 20.0 * w1 + 100.0 * w2) / (1 + w1 + w2),  # 26.2957...
        (30.0 + 200.0 * w1) / (1 + w1),  # 94.1819...: chunk 0 no longer covers step 3
        300.0,  # only chunk 2 covers step 4
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(expected[1:4], [5.020325, 26.295731, 94.181914], rtol=1e-6)
    with pytest.raises(RuntimeError, match="no chunk covers"):
        agg.action(5)


def test_chunk_execution_queries_every_k_steps():
    strategy = make_strategy("chunk", exec_horizon=2)
    assert isinstance(strategy, ChunkExecution)
    queries, actions = [], []
    for t in range(6):
        if strategy.needs_query(t):
            queries.append(t)
            strategy.add_chunk(t, np.arange(t, t + 4, dtype=np.float32)[:, None] * 10)
        actions.append(float(strategy.action(t)[0]))
    assert queries == [0, 2, 4] and actions == [0, 10, 20, 30, 40, 50]
    with pytest.raises(ValueError, match="k=5"):
        ChunkExecution(5).add_chunk(0, np.zeros((4, 1)))
