"""``data_utils.lerobot_io`` on the committed LeRobotDataset v3.0 fixture (written by the ``lerobot``
library itself, see ``scripts/make_lerobot_fixture.py``) and on malformed copies of it."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_utils.lerobot_io import LeRobotFormatError, LeRobotRoot, is_lerobot_root
from data_utils.video_encode import encode_video
from tests import lerobot_fixture_spec as spec

FIXTURE = Path(__file__).resolve().parent / "data" / "lerobot_fixture"
CAMERA_KEYS = [key for key, _, _ in spec.CAMERAS]
VIDEO_KEYS = [key for key, _, kind in spec.CAMERAS if kind == "video"]
EPISODES_META = "meta/episodes/chunk-000/file-000.parquet"
DATA_FILE = "data/chunk-000/file-000.parquet"


@pytest.fixture()
def fixture_copy(tmp_path: Path) -> Path:
    """A writable copy of the fixture, to break."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "root"))


def assert_frame_is(image: np.ndarray, camera_index: int, e: int, t: int) -> None:
    """The decoded frame is frame ``t`` of episode ``e``: mean colour within tolerance, ramp left to right."""
    height, width = spec.CAMERAS[camera_index][1]
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    mean = image.reshape(-1, 3).mean(axis=0)
    expected = np.array(spec.frame_colour(camera_index, e, t))
    assert np.abs(mean - expected).max() <= spec.COLOUR_TOLERANCE, (camera_index, e, t, mean, expected)
    red = image[..., 0].mean(axis=0)
    assert red[: width // 4].mean() + 64 < red[-width // 4 :].mean()  # not mirrored or transposed


def test_detects_and_reads_metadata(tmp_path: Path, episodes_dir: Path) -> None:
    assert is_lerobot_root(FIXTURE)
    assert not is_lerobot_root(episodes_dir) and not is_lerobot_root(tmp_path)
    root = LeRobotRoot(FIXTURE)
    assert root.version == "v3.0" and root.fps == spec.FPS
    assert root.camera_keys == CAMERA_KEYS and root.video_keys == VIDEO_KEYS
    assert (root.state_dim, root.action_dim, root.reasoning_key) == (spec.DIM, spec.DIM, spec.REASONING_KEY)
    assert [ep.index for ep in root.episodes] == list(range(len(spec.EPISODE_LENGTHS)))
    assert [ep.length for ep in root.episodes] == list(spec.EPISODE_LENGTHS)
    assert [ep.task for ep in root.episodes] == [spec.task(e) for e in range(len(spec.EPISODE_LENGTHS))]
    assert root.total_frames == sum(spec.EPISODE_LENGTHS)
    # Episodes lie back to back in one mp4 per camera.
    start = 0.0
    for ep in root.episodes:
        for key in VIDEO_KEYS:
            span = ep.videos[key]
            assert span.path == root.episodes[0].videos[key].path and span.path.is_file()
            assert span.from_timestamp == pytest.approx(start) and span.to_timestamp == pytest.approx(start + ep.length / spec.FPS)
        start += ep.length / spec.FPS
    assert root.image_shape("observation.images.cam_high") == (48, 64, 3)
    stats = root.read_stats()
    assert np.allclose(stats[spec.STATE_KEY]["max"], spec.state(2)[-1])
    assert root.problems() == []


def test_episode_arrays_match_the_formula() -> None:
    root = LeRobotRoot(FIXTURE)
    for e, length in enumerate(spec.EPISODE_LENGTHS):
        arrays = root.read_episode_arrays(e)
        assert arrays.state.dtype == np.float32 and arrays.action.dtype == np.float32
        np.testing.assert_array_equal(arrays.state, spec.state(e))
        np.testing.assert_array_equal(arrays.action, spec.action(e))
        np.testing.assert_allclose(arrays.timestamp, np.arange(length) / spec.FPS, atol=1e-6)
        assert arrays.task == [spec.task(e)] * length
        assert arrays.reasoning == [spec.reasoning(e, t) for t in range(length)]
    assert LeRobotRoot(FIXTURE, reasoning_key=None).read_episode_arrays(0).reasoning is not None  # found by default


def test_every_decoded_frame_is_the_right_one() -> None:
    root = LeRobotRoot(FIXTURE)
    for c, key in enumerate(CAMERA_KEYS):
        for e, length in enumerate(spec.EPISODE_LENGTHS):
            for t in range(length):
                assert_frame_is(root.read_frame(key, e, t), c, e, t)
    with pytest.raises(IndexError, match="frame 20 out of range for episode 0"):
        root.read_frame(CAMERA_KEYS[0], 0, 20)


def test_random_access_equals_sequential_and_does_not_decode_from_the_start() -> None:
    keys = [(key, e, t) for key in VIDEO_KEYS for e, length in enumerate(spec.EPISODE_LENGTHS) for t in range(length)]
    sequential_root = LeRobotRoot(FIXTURE)
    sequential = {k: sequential_root.read_frame(*k) for k in keys}
    shuffled = list(keys)
    random.Random(0).shuffle(shuffled)
    random_root = LeRobotRoot(FIXTURE)
    for k in shuffled:
        np.testing.assert_array_equal(random_root.read_frame(*k), sequential[k], err_msg=str(k))
    for key in VIDEO_KEYS:
        path = sequential_root.episodes[0].videos[key].path
        in_order, at_random = sequential_root._videos[path], random_root._videos[path]
        total = sum(spec.EPISODE_LENGTHS)
        # In order: one seek, each frame decoded once. At random: a seek per jump, a keyframe (every
        # 2 frames) away at most -- decoding from the file's start would average total/2 per read.
        assert in_order.seeks == 1 and in_order.decoded == total
        assert at_random.seeks > total // 2 and at_random.decoded <= 3 * total


def _read_in_child(root: LeRobotRoot, key: str, queue: multiprocessing.Queue) -> None:
    queue.put([root.read_frame(key, e, 3) for e in range(len(spec.EPISODE_LENGTHS))])


def test_survives_fork_and_pickle() -> None:
    root = LeRobotRoot(FIXTURE)
    key = VIDEO_KEYS[0]
    expected = [root.read_frame(key, e, 3) for e in range(len(spec.EPISODE_LENGTHS))]  # parent opens the file
    root.read_frame(key, 1, 10)  # and leaves it positioned elsewhere
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(root, key, queue))
    child.start()
    try:
        got = queue.get(timeout=60)
        child.join(timeout=60)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    clone = pickle.loads(pickle.dumps(root))
    assert clone._videos == {}  # open containers are not carried
    np.testing.assert_array_equal(clone.read_frame(key, 2, 3), expected[2])
    np.testing.assert_array_equal(root.read_frame(key, 2, 3), expected[2])  # the parent's still reads right


def _edit_info(root: Path, edit) -> None:
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text())
    edit(info)
    info_path.write_text(json.dumps(info))


def test_missing_feature_and_wrong_dim_are_named(fixture_copy: Path) -> None:
    with pytest.raises(LeRobotFormatError, match=r"info\.json: feature 'observation\.effort' \(action\) missing; features are \["):
        LeRobotRoot(fixture_copy, action_key="observation.effort")
    with pytest.raises(LeRobotFormatError, match=r"reasoning feature 'observation\.state' has dtype 'float32', expected 'string'"):
        LeRobotRoot(fixture_copy, reasoning_key=spec.STATE_KEY)
    _edit_info(fixture_copy, lambda info: info["features"].pop("action"))
    with pytest.raises(LeRobotFormatError, match=r"feature 'action' \(action\) missing"):
        LeRobotRoot(fixture_copy)
    _edit_info(fixture_copy, lambda info: info["features"].update(action={"dtype": "float32", "shape": [7], "names": None}))
    root = LeRobotRoot(fixture_copy)
    with pytest.raises(LeRobotFormatError, match=r"file-000\.parquet: feature 'action' has rows of length \[14\], expected shape \(7,\)"):
        root.read_episode_arrays(0)
    assert any("expected shape (7,)" in line for line in root.problems())
    with pytest.raises(LeRobotFormatError, match=r"feature 'observation\.images\.nope' \(camera\) missing"):
        root.read_frame("observation.images.nope", 0, 0)
    _edit_info(fixture_copy, lambda info: info.update(codebase_version="v1.6"))
    with pytest.raises(LeRobotFormatError, match="codebase_version 'v1.6' is not supported"):
        LeRobotRoot(fixture_copy)


def test_video_that_does_not_cover_the_episode_is_reported(fixture_copy: Path) -> None:
    path = fixture_copy / EPISODES_META
    table = pq.read_table(path)
    key = VIDEO_KEYS[0]
    for name in ("from_timestamp", "to_timestamp"):
        column = f"videos/{key}/{name}"
        shifted = pa.array([v + (1.0 if i == 2 else 0.0) for i, v in enumerate(table.column(column).to_pylist())])
        table = table.set_column(table.column_names.index(column), column, shifted)
    pq.write_table(table, path)
    root = LeRobotRoot(fixture_copy)
    assert_frame_is(root.read_frame(key, 1, 4), 0, 1, 4)  # other episodes still read
    with pytest.raises(LeRobotFormatError, match=rf"file-000\.mp4: the video ends .* before 1\.900000 s; it does not cover.*camera '{key}', episode 2, frame 0"):
        root.read_frame(key, 2, 0)
    problems = root.problems()
    assert len(problems) == 1 and "episode 2 spans [1.900000, 2.500000) s but the video ends at 1.500000 s" in problems[0]


def test_non_finite_values_and_short_episodes_are_reported(fixture_copy: Path) -> None:
    path = fixture_copy / DATA_FILE
    table = pq.read_table(path)
    state = table.column(spec.STATE_KEY).to_pylist()
    state[20 + 3][5] = float("nan")  # episode 1, frame 3
    table = table.set_column(table.column_names.index(spec.STATE_KEY), spec.STATE_KEY, pa.array(state, type=table.schema.field(spec.STATE_KEY).type))
    pq.write_table(table.slice(0, 70), path)  # and drop the last 5 frames of episode 2
    problems = LeRobotRoot(fixture_copy).problems()
    assert problems == [
        f"{path}: feature 'observation.state' of episode 1 has 1 non-finite value(s), first at frame 3",
        f"{path}: episode 2 has 25 rows with frame_index 0..24, expected 30 rows with frame_index 0..29 (meta/episodes length)",
    ]


def _write_v21_root(root: Path, episodes: int = 2) -> None:
    """A LeRobot v2.1 root (one parquet and one H.264 mp4 per episode) holding the fixture's formula."""
    key, (height, width), _ = spec.CAMERAS[1]
    features = {
        spec.STATE_KEY: {"dtype": "float32", "shape": [spec.DIM], "names": None},
        spec.ACTION_KEY: {"dtype": "float32", "shape": [spec.DIM], "names": None},
        key: {"dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"]},
    }
    info = {
        "codebase_version": "v2.1", "fps": spec.FPS, "chunks_size": 1000, "features": features,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": s}) + "\n" for i, s in enumerate(spec.TASKS)))
    lines = [json.dumps({"episode_index": e, "tasks": [spec.task(e)], "length": spec.EPISODE_LENGTHS[e]}) for e in range(episodes)]
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    vector = pa.list_(pa.float32(), spec.DIM)
    for e in range(episodes):
        length = spec.EPISODE_LENGTHS[e]
        table = pa.table({
            spec.STATE_KEY: pa.array(list(spec.state(e)), type=vector),
            spec.ACTION_KEY: pa.array(list(spec.action(e)), type=vector),
            "timestamp": pa.array(np.arange(length, dtype=np.float32) / spec.FPS),
            "frame_index": pa.array(np.arange(length)),
            "episode_index": pa.array(np.full(length, e)),
            "task_index": pa.array(np.full(length, e % len(spec.TASKS))),
        })
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / f"data/chunk-000/episode_{e:06d}.parquet")
        video = root / f"videos/chunk-000/{key}/episode_{e:06d}.mp4"
        video.parent.mkdir(parents=True, exist_ok=True)
        # H.264 with a keyframe every 8 frames: random access decodes forward from a keyframe.
        encode_video(video, (spec.frame(1, e, t) for t in range(length)), spec.FPS, codec="libx264", gop=8, crf=18)


def test_reads_v21_roots_with_h264(tmp_path: Path) -> None:
    _write_v21_root(tmp_path)
    assert is_lerobot_root(tmp_path)
    root = LeRobotRoot(tmp_path)
    assert root.version == "v2.1" and root.reasoning_key is None and [ep.task for ep in root.episodes] == list(spec.TASKS)
    key = spec.CAMERAS[1][0]
    for e in range(2):
        arrays = root.read_episode_arrays(e)
        np.testing.assert_array_equal(arrays.state, spec.state(e))
        np.testing.assert_array_equal(arrays.action, spec.action(e))
        assert arrays.reasoning is None
        order = list(range(spec.EPISODE_LENGTHS[e]))
        random.Random(e).shuffle(order)
        for t in order:
            assert_frame_is(root.read_frame(key, e, t), 1, e, t)
    assert root.problems() == []


def test_a_frame_read_twice_in_a_row_is_returned_twice() -> None:
    # from_timestamp + timestamp can round to just past the frame's time (1.6 + 1.2 > 2.8): the reader
    # once took that for the next frame and decoded on past it ("no frame at ...").
    root = LeRobotRoot(FIXTURE)
    for key in VIDEO_KEYS:
        for e, length in enumerate(spec.EPISODE_LENGTHS):
            for t in range(length):
                first = root.read_frame(key, e, t)
                np.testing.assert_array_equal(root.read_frame(key, e, t), first)
                assert_frame_is(first, CAMERA_KEYS.index(key), e, t)


def test_h264_random_reads_do_not_decode_past_the_wanted_frame(tmp_path: Path) -> None:
    from data_utils.lerobot_io import _VideoReader

    length, interval = 40, 1.0 / spec.FPS
    video = tmp_path / "h264_g2.mp4"
    # libx264 signals a reorder delay even with a keyframe every 2 frames: the decoder holds each frame
    # back until the next packet is in, unless the reader drains it.
    encode_video(video, (spec.frame(1, 0, t % spec.EPISODE_LENGTHS[0]) for t in range(length)), spec.FPS, codec="libx264", gop=2)
    in_order = _VideoReader(video, threads=1, forward_frames=4)
    expected = [in_order.frame_at(t * interval, interval) for t in range(length)]
    assert in_order.seeks <= 2 and in_order.packets <= length + 2  # in order: decoded once, no re-seeking
    at_random = _VideoReader(video, threads=1, forward_frames=4)
    order = random.Random(0).choices(range(length), k=60)
    for t in order:
        np.testing.assert_array_equal(at_random.frame_at(t * interval, interval), expected[t], err_msg=str(t))
    # 1.5 packets a read on average (keyframe, or keyframe + the frame); 2.5 without draining.
    assert at_random.drains > 0 and at_random.packets <= 1.8 * len(order)
