"""The converters ``scripts/convert_hdf5_to_lerobot.py`` and ``scripts/convert_lerobot_to_hdf5.py``:
round trips, the committed library-written fixture, interruption and resumption.

That the ``lerobot`` library itself opens a converted root is checked by
``scripts/check_lerobot_with_library.py`` in the lerobot venv (not here: that venv is not in CI).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_utils.dataset import chunk_start
from data_utils.hdf5_io import find_all_hdf5, read_frame, read_language, read_reasoning
from data_utils.lerobot_io import LeRobotRoot
from data_utils.lerobot_write import LeRobotWriter, _VideoFile, image_stats, recorded_sim, vector_stats
from scripts.convert_hdf5_to_lerobot import convert_hdf5_to_lerobot, natural_key
from scripts.convert_lerobot_to_hdf5 import convert_lerobot_to_hdf5
from scripts.make_example_episodes import make_example_episodes
from tests import lerobot_fixture_spec as spec

FIXTURE = Path(__file__).resolve().parent / "data" / "lerobot_fixture"
# PSNR (dB) accepted for a camera after HDF5 -> video -> HDF5 at the library's default quality (AV1 crf 30,
# yuv420p): mean over frames, and any single frame. The example frames' sharp saturated edges lose most to 4:2:0
# chroma subsampling (the wrist cameras' green bar: ~31-33 dB measured).
MIN_PSNR_DB = 30.0
MIN_FRAME_PSNR_DB = 28.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def assert_round_trip(src_dir: Path, back_dir: Path) -> dict[str, tuple[float, float]]:
    """Every source episode equals its converted-back twin (names by natural order).

    Returns ``{camera: (mean PSNR over frames, lowest frame PSNR)}`` in dB."""
    sources = sorted(find_all_hdf5(src_dir), key=natural_key)
    assert sorted(p.name for p in back_dir.glob("*.hdf5")) == sorted(f"episode_{i}.hdf5" for i in range(len(sources)))
    values: dict[str, list[float]] = {}
    for i, path in enumerate(sources):
        with h5py.File(path, "r") as a, h5py.File(back_dir / f"episode_{i}.hdf5", "r") as b:
            for key in ("action", "observations/qpos", "observations/qvel"):
                assert a[key].dtype == b[key].dtype, key
                np.testing.assert_array_equal(a[key][()], b[key][()], err_msg=f"{path}: {key}")
            assert bool(a.attrs["sim"]) == bool(b.attrs["sim"])
            assert read_language(a) == read_language(b)
            length = a["action"].shape[0]
            assert [read_reasoning(a, t) for t in range(length)] == [read_reasoning(b, t) for t in range(length)]
            assert sorted(a["observations/images"]) == sorted(b["observations/images"])
            for camera in a["observations/images"]:
                values.setdefault(camera, []).extend(
                    psnr(read_frame(a, camera, t), read_frame(b, camera, t)) for t in range(length)
                )
    return {camera: (float(np.mean(v)), float(np.min(v))) for camera, v in values.items()}


def test_round_trip_hdf5_lerobot_hdf5(episodes_dir: Path, tmp_path: Path, record_property) -> None:
    out = tmp_path / "lerobot"
    summary = convert_hdf5_to_lerobot(episodes_dir, out, fps=50, progress=False)
    assert summary["episodes"] == 4 and summary["sim"] is True
    assert not list(tmp_path.glob("lerobot.tmp-*"))
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 4 and info["total_frames"] == 4 * 30
    assert info["features"]["observation.images.cam_high"]["info"]["video.codec"] == "av1"
    assert recorded_sim(info) is True

    # Our reader sees exactly the source arrays.
    root = LeRobotRoot(out)
    assert root.problems() == []
    assert root.reasoning_key == "observation.reasoning"
    sources = sorted(find_all_hdf5(episodes_dir), key=natural_key)
    all_qpos = []
    for i, path in enumerate(sources):
        arrays = root.read_episode_arrays(i)
        with h5py.File(path, "r") as src:
            np.testing.assert_array_equal(arrays.state, src["observations/qpos"][()])
            np.testing.assert_array_equal(arrays.action, src["action"][()])
            assert arrays.task == [read_language(src)] * 30
            assert arrays.reasoning == [read_reasoning(src, t) for t in range(30)]
            all_qpos.append(src["observations/qpos"][()])
    # Aggregated statistics are those of all frames (mean/std/min/max exact up to float rounding).
    stats = root.read_stats()
    qpos = np.concatenate(all_qpos).astype(np.float64)
    np.testing.assert_allclose(stats["observation.state"]["mean"], qpos.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["std"], qpos.std(axis=0), atol=1e-6)
    np.testing.assert_array_equal(stats["observation.state"]["min"], qpos.min(axis=0))
    assert stats["observation.state"]["count"].tolist() == [120]
    assert stats["observation.images.cam_high"]["mean"].shape == (3, 1, 1)
    root.close()

    back = tmp_path / "back"
    result = convert_lerobot_to_hdf5(out, back, progress=False)
    assert result["converted"] == [0, 1, 2, 3] and result["skipped"] == []
    psnrs = assert_round_trip(episodes_dir, back)
    record_property("psnr_db", psnrs)
    print("round-trip PSNR dB (mean, lowest frame):", {k: (round(m, 1), round(w, 1)) for k, (m, w) in psnrs.items()})
    assert all(mean >= MIN_PSNR_DB and worst >= MIN_FRAME_PSNR_DB for mean, worst in psnrs.values()), psnrs


def test_real_robot_round_trip_keeps_the_pairing(tmp_path: Path) -> None:
    """sim=False, JPEG-compressed source, H.264, one mp4 and data file per episode: exact pairing and values."""
    src = tmp_path / "src"
    make_example_episodes(src, num_episodes=3, episode_len=12, height=32, width=48, seed=3, compress=True, sim=False)
    out = tmp_path / "lerobot"
    convert_hdf5_to_lerobot(
        src, out, fps=30, vcodec="h264", progress=False, data_files_size_in_mb=1e-6, video_files_size_in_mb=1e-6
    )
    info = json.loads((out / "meta/info.json").read_text())
    assert info["dexvla"] == {"source": "act_hdf5", "sim": False} and recorded_sim(info) is False
    assert info["fps"] == 30 and info["features"]["observation.images.cam_high"]["info"]["video.codec"] == "h264"
    # Files roll over past the (tiny) size limits: one data file and one mp4 per camera per episode.
    assert len(list((out / "data").rglob("*.parquet"))) == 3
    assert len(list((out / "videos/observation.images.cam_high").rglob("*.mp4"))) == 3
    root = LeRobotRoot(out)
    assert root.problems() == []
    assert all(ep.videos["observation.images.cam_high"].from_timestamp == 0.0 for ep in root.episodes)
    chunk = 5
    for i, path in enumerate(sorted(find_all_hdf5(src), key=natural_key)):
        arrays = root.read_episode_arrays(i)
        with h5py.File(path, "r") as h5:
            action = h5["action"][()]
            for t in range(12):
                # The chunk a training sample gets at frame t, from each format's own rule.
                s_h5, s_lr = chunk_start(t, bool(h5.attrs["sim"])), chunk_start(t, recorded_sim(root.info))
                np.testing.assert_array_equal(arrays.action[s_lr : s_lr + chunk], action[s_h5 : s_h5 + chunk])
            assert psnr(root.read_frame("observation.images.cam_high", i, 11), read_frame(h5, "cam_high", 11)) >= MIN_PSNR_DB
    root.close()
    back = tmp_path / "back"
    convert_lerobot_to_hdf5(out, back, compress=True, progress=False)
    with h5py.File(back / "episode_0.hdf5", "r") as h5:
        assert bool(h5.attrs["compress"]) and not bool(h5.attrs["sim"])
    psnrs = assert_round_trip(src, back)
    print("round-trip PSNR dB via H.264 + JPEG (mean, lowest frame):", {k: (round(m, 1), round(w, 1)) for k, (m, w) in psnrs.items()})
    assert all(mean >= MIN_PSNR_DB - 3 for mean, _ in psnrs.values()), psnrs  # JPEG on top of H.264


def test_committed_fixture_to_hdf5_gives_the_formula(tmp_path: Path) -> None:
    result = convert_lerobot_to_hdf5(FIXTURE, tmp_path, progress=False)
    assert result["converted"] == [0, 1, 2]
    cameras = [key.removeprefix("observation.images.") for key, _, _ in spec.CAMERAS]
    for e, length in enumerate(spec.EPISODE_LENGTHS):
        with h5py.File(tmp_path / f"episode_{e}.hdf5", "r") as h5:
            assert bool(h5.attrs["sim"]) is True  # no "dexvla" key: the LeRobot pairing
            np.testing.assert_array_equal(h5["observations/qpos"][()], spec.state(e))
            np.testing.assert_array_equal(h5["action"][()], spec.action(e))
            np.testing.assert_array_equal(h5["observations/qvel"][()], np.zeros((length, spec.DIM), np.float32))
            assert read_language(h5) == spec.task(e)
            assert [read_reasoning(h5, t) for t in range(length)] == [spec.reasoning(e, t) for t in range(length)]
            assert sorted(h5["observations/images"]) == sorted(cameras)
            for c, (_, _, kind) in enumerate(spec.CAMERAS):
                for t in range(length):
                    image = read_frame(h5, cameras[c], t)
                    if kind == "image":  # PNG in the parquet: lossless
                        np.testing.assert_array_equal(image, spec.frame(c, e, t))
                    else:
                        mean = image.reshape(-1, 3).mean(axis=0)
                        assert np.abs(mean - spec.frame_colour(c, e, t)).max() <= spec.COLOUR_TOLERANCE, (c, e, t, mean)


def test_interrupted_hdf5_to_lerobot_leaves_nothing(episodes_dir: Path, tmp_path: Path, monkeypatch) -> None:
    real_write = _VideoFile.write
    calls = {"n": 0}

    def failing_write(self, image):  # dies in the middle of the second episode
        calls["n"] += 1
        if calls["n"] == 30 * 3 + 10:
            raise RuntimeError("simulated crash")
        real_write(self, image)

    monkeypatch.setattr(_VideoFile, "write", failing_write)
    out = tmp_path / "lerobot"
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert_hdf5_to_lerobot(episodes_dir, out, progress=False)
    assert calls["n"] == 100 and sorted(p.name for p in tmp_path.iterdir()) == []

    # With --overwrite, a failed run leaves the previous root untouched.
    out.mkdir()
    (out / "marker").write_text("previous")
    calls["n"] = 0
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert_hdf5_to_lerobot(episodes_dir, out, overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lerobot"] and [p.name for p in out.iterdir()] == ["marker"]
    with pytest.raises(FileExistsError, match="already exists"):
        convert_hdf5_to_lerobot(episodes_dir, out, progress=False)


def test_lerobot_to_hdf5_resumes_after_an_interruption(tmp_path: Path, monkeypatch) -> None:
    real_create = h5py.Group.create_dataset
    state = {"episode_files": 0}

    def failing_create(self, name, *args, **kwargs):  # dies inside the second episode's file, after its images
        if name == "language_raw":
            state["episode_files"] += 1
            if state["episode_files"] == 2:
                raise OSError("simulated disk full")
        return real_create(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create)
    with pytest.raises(OSError, match="simulated disk full"):
        convert_lerobot_to_hdf5(FIXTURE, tmp_path, progress=False)
    # The first episode is complete; nothing of the second remains, under any name.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode_0.hdf5"]
    first = (tmp_path / "episode_0.hdf5").stat()
    monkeypatch.setattr(h5py.Group, "create_dataset", real_create)

    result = convert_lerobot_to_hdf5(FIXTURE, tmp_path, progress=False)
    assert result["skipped"] == [0] and result["converted"] == [1, 2]
    again = (tmp_path / "episode_0.hdf5").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # not rewritten
    with h5py.File(tmp_path / "episode_1.hdf5", "r") as h5:
        np.testing.assert_array_equal(h5["action"][()], spec.action(1))
    assert convert_lerobot_to_hdf5(FIXTURE, tmp_path, progress=False)["converted"] == []
    # --episodes converts only those named.
    subset = tmp_path / "subset"
    assert convert_lerobot_to_hdf5(FIXTURE, subset, episodes=[2], progress=False)["converted"] == [2]
    assert [p.name for p in subset.iterdir()] == ["episode_2.hdf5"]


def test_statistics_match_numpy_and_the_library_layout() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(37, 5)).astype(np.float32)
    stats = vector_stats(values)
    np.testing.assert_allclose(stats["q10"], np.quantile(values.astype(np.float64), 0.10, axis=0))
    assert stats["count"].tolist() == [37] and stats["min"].dtype == np.float32
    frames = rng.integers(0, 256, size=(9, 3, 7, 5), dtype=np.uint8)
    image = image_stats(frames)
    per_channel = frames.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
    for key, q in (("q01", 0.01), ("q50", 0.5), ("q99", 0.99)):
        np.testing.assert_allclose(image[key].reshape(3), np.quantile(per_channel, q, axis=1) / 255.0, atol=1e-12)
    np.testing.assert_allclose(image["std"].reshape(3), per_channel.std(axis=1) / 255.0, atol=1e-12)
    assert image["mean"].shape == (3, 1, 1) and image["count"].tolist() == [9]


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    features = {"observation.state": {"dtype": "float32", "shape": [2], "names": None},
                "observation.images.top": {"dtype": "video", "shape": [8, 8, 3], "names": None}}
    with pytest.raises(ValueError, match="even H and W"):
        LeRobotWriter(tmp_path / "odd", 10, {**features, "observation.images.top": {"dtype": "video", "shape": [7, 8, 3]}})
    writer = LeRobotWriter(tmp_path / "root", 10, features)
    with pytest.raises(ValueError, match=r"camera 'observation.images.top', frame 1 is \(8, 6, 3\)"):
        writer.add_episode("t", {"observation.state": np.zeros((2, 2))}, frames={
            "observation.images.top": [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 6, 3), np.uint8)]})
    writer.abort()
    with pytest.raises(FileExistsError, match="not empty"):
        LeRobotWriter(tmp_path / "root", 10, features)
