"""Tasks, episode discovery, statistics, EpisodicDataset, sampler, images, integrity checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from aloha_scripts import constants
from aloha_scripts.constants import REPO_ROOT, get_task_config
from data_utils.check_data_integrity import DataIntegrityError, check_dirs
from data_utils.dataset import EpisodicDataset, chunk_action_deltas
from data_utils.hdf5_io import decode_jpeg, encode_jpeg, find_all_hdf5
from data_utils.image_utils import build_train_augmentation, parse_image_size, to_pil_images
from data_utils.normalization import MINMAX_MARGIN, NormStats, RunningStats
from data_utils.sampler import EpisodeSampler
from data_utils.utils import get_norm_stats, load_data
from scripts.make_example_episodes import make_example_episodes
from tests.broken_episodes import EXPECTED_PROBLEMS, write_broken_episodes
from tests.conftest import CAMERAS


def _load(directory: Path, **kwargs):
    defaults = dict(
        dataset_dir_l=[str(directory)],
        name_filter=None,
        camera_names=CAMERAS,
        batch_size_train=2,
        batch_size_val=2,
        chunk_size=8,
        rank0_print=lambda *a: None,
        train_ratio=1.0,
    )
    defaults.update(kwargs)
    return load_data(**defaults)


def _all_arrays(paths, key):
    out = []
    for path in paths:
        with h5py.File(path, "r") as root:
            out.append(root[key][()])
    return out


# ---- task registry ---------------------------------------------------------------------------------
def test_example_task_resolves_against_repo_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = get_task_config("example_tasks")
    assert Path(config["dataset_dir"][0]).is_absolute()
    relative = get_task_config("t", {"t": {"dataset_dir": ["data/x"], "episode_len": 5, "camera_names": ["c"]}})
    assert relative["dataset_dir"] == [str(REPO_ROOT / "data/x")]
    assert relative["train_ratio"] == 0.999 and relative["sample_weights"] is None


def test_unknown_task_and_bad_entries_say_so():
    with pytest.raises(KeyError, match="unknown task_name 'nope'.*constants.py"):
        get_task_config("nope")
    with pytest.raises(KeyError, match="lacks required key.*camera_names"):
        get_task_config("t", {"t": {"dataset_dir": ["x"], "episode_len": 5}})
    with pytest.raises(TypeError, match="must be a directory or a non-empty list"):
        get_task_config("t", {"t": {"dataset_dir": 5, "episode_len": 5, "camera_names": ["c"]}})
    with pytest.raises(ValueError, match="sample_weights has 1 entries but dataset_dir has 2"):
        get_task_config(
            "t", {"t": {"dataset_dir": ["a", "b"], "episode_len": 5, "camera_names": ["c"], "sample_weights": [1]}}
        )
    assert "example_tasks" in constants.TASK_CONFIGS


# ---- discovery and name_filter ---------------------------------------------------------------------
def test_name_filter_applied_before_counting(episodes_dir):
    keep = lambda path: not path.endswith("episode_0.hdf5")  # noqa: E731
    paths = find_all_hdf5(episodes_dir, name_filter=keep)
    assert [Path(p).name for p in paths] == ["episode_1.hdf5", "episode_2.hdf5", "episode_3.hdf5"]
    train, val, stats, _ = _load(episodes_dir, name_filter=keep)
    assert val is None and stats.num_episodes == 3
    # Episode ids index the filtered list: every item reads the file its id names.
    for index in range(0, len(train), 7):
        episode_id, start_ts = train._locate_transition(index)
        with h5py.File(train.dataset_path_list[episode_id], "r") as root:
            qpos = root["/observations/qpos"][start_ts]
        assert torch.allclose(train[index]["state"], torch.as_tensor(stats.normalize_state(qpos), dtype=torch.float32))


def test_empty_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .hdf5 episodes found under"):
        find_all_hdf5(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_all_hdf5(tmp_path / "missing")


# ---- statistics ------------------------------------------------------------------------------------
def test_streamed_stats_match_full_computation(episodes_dir):
    paths = find_all_hdf5(episodes_dir)
    stats, lengths = get_norm_stats(paths)
    actions = np.concatenate(_all_arrays(paths, "/action"))
    qpos = np.concatenate(_all_arrays(paths, "/observations/qpos"))
    assert lengths == [30] * 4
    np.testing.assert_allclose(stats.action_mean, actions.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.action_std, np.clip(actions.std(0, ddof=1), 1e-2, None), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats.action_min, actions.min(0) - MINMAX_MARGIN, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.action_max, actions.max(0) + MINMAX_MARGIN, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.qpos_mean, qpos.mean(0), rtol=1e-5, atol=1e-6)


def test_std_floor_applies_to_constant_dimension(tmp_path):
    running = RunningStats()
    running.update(np.ones((10, 3)))
    assert np.allclose(running.std, 0.0) and np.allclose(running.mean, 1.0)
    make_example_episodes(tmp_path, num_episodes=2, episode_len=10, height=28, width=28)
    for path in find_all_hdf5(tmp_path):
        with h5py.File(path, "r+") as root:
            root["/action"][:, 2] = 0.5
            root["/observations/qpos"][:, 4] = -0.25
    stats, _ = get_norm_stats(find_all_hdf5(tmp_path))
    assert stats.action_std[2] == np.float32(1e-2) and stats.qpos_std[4] == np.float32(1e-2)
    assert stats.action_std[0] > 1e-2


def test_delta_control_stats_are_those_of_the_deltas(episodes_dir):
    class DataArgs:
        delta_control = True

    train, _, dstats, _ = _load(episodes_dir, config={"data_args": DataArgs()})
    assert dstats.delta_control
    episode_id, start_ts = train._locate_transition(5)
    with h5py.File(train.dataset_path_list[episode_id], "r") as root:
        action, qpos = root["/action"][()], root["/observations/qpos"][()]
    # Sim episodes: the chunk starts at start_ts; its first delta is taken from the frame's state.
    expected = chunk_action_deltas(action[start_ts : start_ts + 8], qpos[start_ts])
    normalized = torch.as_tensor(dstats.normalize_action(expected), dtype=torch.float32)
    torch.testing.assert_close(train[5]["action"], normalized, rtol=0, atol=1e-6)  # float32 deltas in [-1, 1]
    # The statistics are those of every (unpadded) delta the dataset yields (brute force over all steps).
    deltas = []
    for index in range(len(train)):
        raw = train.load_raw_step(*train._locate_transition(index))
        deltas.append(raw["action"][~raw["is_pad"]].astype(np.float64))
    deltas = np.concatenate(deltas)
    np.testing.assert_allclose(dstats.action_min, deltas.min(0) - MINMAX_MARGIN, atol=1e-6)
    np.testing.assert_allclose(dstats.action_max, deltas.max(0) + MINMAX_MARGIN, atol=1e-6)
    np.testing.assert_allclose(dstats.action_mean, deltas.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dstats.action_std, np.maximum(deltas.std(0, ddof=1), 1e-2), rtol=1e-5, atol=1e-7)


def test_stats_json_round_trip_is_exact_and_pickle_free(tmp_path, episodes_dir):
    stats, _ = get_norm_stats(find_all_hdf5(episodes_dir), camera_names=CAMERAS, chunk_size=8)
    path = stats.save(tmp_path)
    assert path.name == "dataset_stats.json"
    data = json.loads(path.read_text())  # plain JSON: no pickle involved
    assert data["camera_names"] == CAMERAS and data["state_dim"] == 14 and data["action_dim"] == 14
    loaded = NormStats.load(tmp_path)
    for name in ("action_mean", "action_std", "action_min", "action_max", "qpos_mean", "qpos_std"):
        assert np.array_equal(getattr(loaded, name), getattr(stats, name))
    data["state_dim"] = 7
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="state_dim says 7"):
        NormStats.load(path)


def test_unnormalize_is_inverse_of_normalize(episodes_dir):
    stats, _ = get_norm_stats(find_all_hdf5(episodes_dir))
    action = torch.randn(5, 8, 14, dtype=torch.float64)
    assert torch.allclose(stats.unnormalize_action(stats.normalize_action(action)), action, atol=1e-9)
    state = np.random.default_rng(0).normal(size=(3, 14))
    assert np.allclose(stats.unnormalize_state(stats.normalize_state(state)), state)


# ---- the dataset -----------------------------------------------------------------------------------
def test_sample_contract(episodes_dir):
    train, _, stats, _ = _load(episodes_dir, policy_class="scale_dp_policy")
    sample = train[3]
    assert set(sample) == {"image", "state", "action", "is_pad", "raw_lang", "reasoning"}
    assert sample["image"].shape == (3, 3, 56, 56) and sample["image"].dtype == torch.uint8
    assert sample["state"].shape == (14,) and sample["state"].dtype == torch.float32
    assert sample["action"].shape == (8, 14) and sample["is_pad"].dtype == torch.bool
    assert sample["raw_lang"] == "move both arms to the red square"
    assert sample["reasoning"] == "reach toward the red square"
    assert train.augment_images  # diffusion heads augment by default
    assert sample["action"].abs().max() <= 1.0


def test_chunk_padding_at_episode_end(episodes_dir):
    train, _, stats, _ = _load(episodes_dir)
    last = train.episode_len[0] - 1  # the last step of the first episode
    sample = train[last]
    assert sample["is_pad"].tolist() == [False] + [True] * 7
    assert torch.all(sample["action"][1:] == 0)
    episode_id, start_ts = train._locate_transition(last)
    with h5py.File(train.dataset_path_list[episode_id], "r") as root:
        expected = root["/action"][start_ts]
    assert torch.allclose(sample["action"][0], torch.as_tensor(stats.normalize_action(expected), dtype=torch.float32))


def test_real_robot_chunk_starts_one_step_early(tmp_path):
    make_example_episodes(tmp_path, num_episodes=1, episode_len=12, height=28, width=28)
    path = tmp_path / "episode_0.hdf5"
    with h5py.File(path, "r+") as root:
        root.attrs["sim"] = False
        action = root["/action"][()]
    train, _, stats, _ = _load(tmp_path, chunk_size=4)
    expected = stats.normalize_action(action[4:8])  # start_ts 5 -> actions from step 4
    assert torch.allclose(train[5]["action"], torch.as_tensor(expected, dtype=torch.float32))


def test_augmentation_switch_and_shared_draw(episodes_dir):
    class DataArgs:
        augment_images = False

    plain, *_ = _load(episodes_dir, policy_class="scale_dp_policy", config={"data_args": DataArgs()})
    assert not plain.augment_images
    frames = torch.randint(0, 255, (1, 3, 40, 40), dtype=torch.uint8).repeat(3, 1, 1, 1)
    torch.manual_seed(0)
    augmented = build_train_augmentation(40, 40)(frames)
    assert augmented.shape == frames.shape and augmented.dtype == torch.uint8
    assert not torch.equal(augmented, frames)
    assert torch.equal(augmented[0], augmented[1]) and torch.equal(augmented[1], augmented[2])


def test_augmentation_depends_only_on_seed_epoch_and_index(episodes_dir):
    train, *_ = _load(episodes_dir, policy_class="scale_dp_policy", seed=7)
    first = train[5]["image"]
    torch.manual_seed(123)  # the global RNG must not matter (a resumed run restores it late)
    assert torch.equal(train[5]["image"], first)
    train.set_epoch(1)
    assert not torch.equal(train[5]["image"], first)
    other, *_ = _load(episodes_dir, policy_class="scale_dp_policy", seed=8)
    assert not torch.equal(other[5]["image"], first)


def test_processor_output_is_returned(episodes_dir):
    class Recorder:
        def forward_process(self, sample, use_reasoning=True):
            return {"seen": sorted(sample), "use_reasoning": use_reasoning}

    class DataArgs:
        use_reasoning = False

    train, *_ = _load(episodes_dir, llava_pythia_process=Recorder(), config={"data_args": DataArgs()})
    assert train[0] == {
        "seen": ["action", "image", "is_pad", "raw_lang", "reasoning", "state"],
        "use_reasoning": False,
    }


def test_train_ratio_stats_dir_and_split(episodes_dir, tmp_path):
    train, val, stats, params = _load(episodes_dir, train_ratio=0.5)
    assert len(train.episode_ids) == 2 and len(val.episode_ids) == 2
    assert set(train.episode_ids).isdisjoint(val.episode_ids) and not val.augment_images
    other = tmp_path / "stats_only"
    make_example_episodes(other, num_episodes=2, episode_len=10, height=28, width=28, seed=5)
    _, _, stats_other, _ = _load(episodes_dir, stats_dir_l=[str(other)])
    expected, _ = get_norm_stats(find_all_hdf5(other))
    assert np.array_equal(stats_other.action_min, expected.action_min) and stats_other.num_episodes == 2


def test_compressed_episodes_decode(episodes_dir, compressed_episodes_dir):
    plain, *_ = _load(episodes_dir)
    compressed, *_ = _load(compressed_episodes_dir)
    # Same seed -> the same episode_0, stored raw vs JPEG.
    raw_frames = plain.load_raw_step(plain.dataset_path_list.index(str(episodes_dir / "episode_0.hdf5")), 3)
    jpeg_frames = compressed.load_raw_step(
        compressed.dataset_path_list.index(str(compressed_episodes_dir / "episode_0.hdf5")), 3
    )
    difference = np.abs(raw_frames["images"].astype(float) - jpeg_frames["images"].astype(float)).mean()
    assert difference < 4.0
    frame = np.zeros((16, 16, 3), dtype=np.uint8)
    frame[:, :, 0] = 250  # channel order must survive the ACT (cv2) convention
    decoded = decode_jpeg(np.frombuffer(encode_jpeg(frame, quality=100) + b"\0" * 10, dtype=np.uint8))
    assert decoded.shape == (16, 16, 3) and abs(float(decoded[..., 0].mean()) - 250) < 6


# ---- sampler ---------------------------------------------------------------------------------------
def test_sampler_honours_weights_and_episode_first():
    lengths = [[10, 1000], [50]]
    only_first = EpisodeSampler(lengths, sample_weights=[1.0, 0.0], num_samples=2000, seed=0)
    assert max(only_first) < 1010
    only_second = EpisodeSampler(lengths, sample_weights=[0.0, 3.0], num_samples=500, seed=0)
    assert min(only_second) >= 1010
    step_uniform = np.array(list(EpisodeSampler([[10, 1000]], num_samples=4000, seed=1)))
    episode_uniform = np.array(list(EpisodeSampler([[10, 1000]], episode_first=True, num_samples=4000, seed=1)))
    assert (step_uniform < 10).mean() < 0.03  # ~1% of steps live in the short episode
    assert 0.45 < (episode_uniform < 10).mean() < 0.55  # half the draws pick the short episode
    again = EpisodeSampler([[10, 1000]], episode_first=True, num_samples=4000, seed=1)
    assert np.array_equal(np.array(list(again)), episode_uniform)
    again.set_epoch(1)
    assert not np.array_equal(np.array(list(again)), episode_uniform)


def test_epoch_reaches_the_dataset_under_multi_process_sharding(episodes_dir):
    from accelerate.data_loader import BatchSamplerShard, DataLoaderShard

    train, *_ = _load(episodes_dir, policy_class="scale_dp_policy")
    sampler = EpisodeSampler([train.episode_len], dataset=train)
    shard = BatchSamplerShard(torch.utils.data.BatchSampler(sampler, 2, False), num_processes=2, process_index=0)
    loader = DataLoaderShard(train, batch_sampler=shard, collate_fn=lambda items: items)
    loader.set_epoch(3)  # what the Trainer calls each epoch
    assert sampler.epoch == 3 and train.epoch == 3


def test_sampler_params_from_load_data(episodes_dir):
    class DataArgs:
        episode_first = True

    _, _, _, params = _load(episodes_dir, sample_weights=[1.0], config={"data_args": DataArgs()})
    assert params["train"]["sample_weights"] == [1.0] and params["train"]["episode_first"] is True
    sampler = EpisodeSampler(**{k: v for k, v in params["train"].items() if k != "batch_size"})
    assert len(sampler) == 120 and max(sampler) < 120


# ---- images ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected", [("(320,240)", (320, 240)), ("320, 240", (320, 240)), ("[56x56]", (56, 56)), ((4, 3), (4, 3))]
)
def test_parse_image_size(text, expected):
    assert parse_image_size(text) == expected


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "(320,)", "(0,5)", "abc"])
def test_parse_image_size_rejects_without_eval(text):
    with pytest.raises(ValueError, match="image size"):
        parse_image_size(text)


def test_wrist_and_stable_cameras_resized_separately():
    frames = torch.zeros(3, 3, 48, 64, dtype=torch.uint8)
    images = to_pil_images(frames, CAMERAS, image_size_stable=(56, 42), image_size_wrist=(28, 28))
    assert [img.size for img in images] == [(56, 42), (28, 28), (28, 28)]


# ---- integrity -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broken_dir(episodes_dir, tmp_path_factory) -> Path:
    return write_broken_episodes(episodes_dir / "episode_0.hdf5", tmp_path_factory.mktemp("broken"))


def test_check_names_each_broken_file(broken_dir):
    problems = check_dirs([str(broken_dir)], CAMERAS, state_dim=14, action_dim=14)
    for name, (key, fragment) in EXPECTED_PROBLEMS.items():
        lines = [line for line in problems if line.startswith(str(broken_dir / name) + ":")]
        assert lines, f"no problem reported for {name}"
        assert any((not key or f"'{key}'" in line) and fragment in line for line in lines), (name, lines)


def test_cli_exit_codes(broken_dir, episodes_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "data_utils.check_data_integrity"]
    cams = ["--camera_names", *CAMERAS, "--state_dim", "14", "--action_dim", "14"]
    bad = subprocess.run([*cmd, str(broken_dir), *cams], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert bad.returncode == 1
    assert sum(line.startswith(str(broken_dir)) for line in bad.stdout.splitlines()) >= len(EXPECTED_PROBLEMS)
    good = subprocess.run([*cmd, str(episodes_dir), *cams], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert good.returncode == 0, good.stdout + good.stderr


def test_load_data_stops_with_the_same_lines(broken_dir, episodes_dir):
    with pytest.raises(DataIntegrityError) as info:
        _load(broken_dir, state_dim=14, action_dim=14)
    text = str(info.value)
    for name in EXPECTED_PROBLEMS:  # compressed frames too: load_data checks their format and decodes one
        assert str(broken_dir / name) in text, name


def test_dims_mismatch_between_episodes_is_reported(tmp_path):
    make_example_episodes(tmp_path, num_episodes=2, episode_len=10, height=28, width=28)
    with h5py.File(tmp_path / "episode_1.hdf5", "r+") as root:
        action = root["/action"][()]
        del root["/action"]
        root.create_dataset("/action", data=action[:, :10])
    with pytest.raises(DataIntegrityError, match=r"episode_1.hdf5: key '/action': expected shape \(T, 14\)"):
        _load(tmp_path)


def test_dataset_rejects_mismatched_delta_control(episodes_dir):
    train, _, stats, _ = _load(episodes_dir)
    with pytest.raises(ValueError, match="delta_control=True but the statistics"):
        EpisodicDataset(train.dataset_path_list, CAMERAS, stats, [0], [30], 8, delta_control=True)


def _reasoning_variants(directory: Path) -> list[Path]:
    """Three episodes: sub-step reasonings, only the reference's episode-level ``/reasoning``, neither."""
    paths = make_example_episodes(directory, num_episodes=3, episode_len=10, height=28, width=28)
    with h5py.File(paths[1], "r+") as root:
        del root["/substep_reasonings"]
        root.create_dataset("reasoning", data=np.array([b"pick the cube, then lift it"]))
    with h5py.File(paths[2], "r+") as root:
        del root["/substep_reasonings"]
    return paths


def test_reasoning_falls_back_to_the_episode_key_and_unannotated_episodes_train_without(tmp_path):
    paths = _reasoning_variants(tmp_path)

    class Process:
        def forward_process(self, sample, use_reasoning=True):
            return sample

    class DataArgs:
        use_reasoning = True

    messages: list[str] = []
    train, *_ = _load(tmp_path, llava_pythia_process=Process(), config={"data_args": DataArgs()}, rank0_print=messages.append)
    # One warning, at load time, naming only the episode without any reasoning.
    warnings = [m for m in messages if "WARNING" in m]
    assert len(warnings) == 1 and str(paths[2]) in warnings[0]
    assert str(paths[0]) not in warnings[0] and str(paths[1]) not in warnings[0]
    by_episode = {}
    for index in range(len(train)):
        episode_id, start_ts = train._locate_transition(index)
        by_episode.setdefault(Path(train.dataset_path_list[episode_id]).name, set()).add(train[index]["reasoning"])
    assert by_episode["episode_0.hdf5"] == {"reach toward the red square", "approach the red square", "hold both arms at the square"}
    assert by_episode["episode_1.hdf5"] == {"pick the cube, then lift it"}
    assert by_episode["episode_2.hdf5"] == {None}
    # Without use_reasoning nothing is said (the reasoning is not trained on at all).
    DataArgs.use_reasoning = False
    messages.clear()
    _load(tmp_path, llava_pythia_process=Process(), config={"data_args": DataArgs()}, rank0_print=messages.append)
    assert not [m for m in messages if "WARNING" in m]


def test_a_batch_mixes_reasoning_and_no_reasoning_answers(tmp_path, tiny_model_dir):
    from transformers import AutoProcessor, AutoTokenizer

    from data_utils.data_collator import Qwen2VLADataCollatorForSupervisedDataset
    from qwen2_vla.robot_data_processor import IGNORE_INDEX, Qwen2VLAProcess

    class DataArgs:
        use_reasoning = True
        image_size_stable = "(28,28)"
        image_size_wrist = "(28,28)"

    _reasoning_variants(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    process = Qwen2VLAProcess(tokenizer, processor, DataArgs(), CAMERAS)
    train, *_ = _load(tmp_path, llava_pythia_process=process, config={"data_args": DataArgs()})
    first = {Path(train.dataset_path_list[train._locate_transition(i)[0]]).name: i for i in reversed(range(len(train)))}
    items = [train[first[name]] for name in ("episode_0.hdf5", "episode_1.hdf5", "episode_2.hdf5")]
    batch = Qwen2VLADataCollatorForSupervisedDataset(processor, None, tokenizer)(items)
    answers = [tokenizer.decode(ids[labels != IGNORE_INDEX]) for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True)]
    assert answers == [
        "reach toward the red squareNext action:<|im_end|>",
        "pick the cube, then lift itNext action:<|im_end|>",
        "<|im_end|>",  # the unannotated episode: the no-reasoning answer, no language loss on reasoning
    ]


def test_missing_reasoning_is_a_warning_of_the_integrity_check(tmp_path, capsys):
    from data_utils.check_data_integrity import main

    paths = _reasoning_variants(tmp_path)
    assert check_dirs([str(tmp_path)], CAMERAS) == []
    assert main([str(tmp_path), "--camera_names", *CAMERAS]) == 0
    out = capsys.readouterr().out
    warning = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1 and str(paths[2]) in warning[0] and str(paths[1]) not in warning[0]
    # An empty episode-level reasoning is a real problem.
    with h5py.File(paths[1], "r+") as root:
        del root["/reasoning"]
        root.create_dataset("reasoning", data=np.array([], dtype="S1"))
    assert main([str(tmp_path), "--camera_names", *CAMERAS]) == 1
    assert f"{paths[1]}: key '/reasoning': expected shape (1,), found shape (0,)" in capsys.readouterr().out


def test_dataset_dir_given_as_a_string_is_one_directory(tmp_path):
    make_example_episodes(tmp_path, num_episodes=2, episode_len=10, height=28, width=28)
    tasks = {
        "relative": {"dataset_dir": "data/x", "stats_dir": "data/s", "episode_len": 5, "camera_names": ["c"]},
        "absolute": {"dataset_dir": str(tmp_path), "episode_len": 10, "camera_names": CAMERAS, "sample_weights": [1.0]},
    }
    relative = get_task_config("relative", tasks)
    assert relative["dataset_dir"] == [str(REPO_ROOT / "data/x")] and relative["stats_dir"] == [str(REPO_ROOT / "data/s")]
    config = get_task_config("absolute", tasks)
    assert config["dataset_dir"] == [str(tmp_path)]
    train, *_ = _load(tmp_path, dataset_dir_l=config["dataset_dir"])
    assert len(train) == 20
    with pytest.raises(TypeError, match="non-empty list"):
        get_task_config("t", {"t": {"dataset_dir": [], "episode_len": 5, "camera_names": ["c"]}})
