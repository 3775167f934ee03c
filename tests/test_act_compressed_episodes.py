"""Compressed episodes as ACT's recorders write them, read by our reader (and ours read by ACT's loader).

ACT / ALOHA / AgileX recorders (facts, not code): each frame, as the recorder holds it, goes through
``cv2.imencode('.jpg', frame, [cv2.IMWRITE_JPEG_QUALITY, 50])``; the buffers are zero-padded to the
longest one and stored as a ``(T, max_len)`` uint8 dataset chunked ``(1, max_len)``; ``/compress_len``
``(num_cams, T)`` holds the lengths (created without a dtype, so float32); the root attribute
``compress`` is True. The frames are RGB as held: MuJoCo renders RGB, and the real recorders take ROS
images with ``imgmsg_to_cv2(msg, 'passthrough')`` from cameras publishing ``rgb8``. ACT's loader decodes
with ``cv2.imdecode(buffer, 1)`` and no colour conversion, so a frame comes back in the order it was
recorded (RGB), although the JPEG itself holds its channels swapped. Our reader must do the same.
"""

from __future__ import annotations

from pathlib import Path

import cv2  # opencv-python-headless (requirements.txt): the encoder ACT's recorders use
import h5py
import numpy as np
import pytest

from data_utils.hdf5_io import read_frame, write_episode
from evaluate.robots.replay import ReplayRobot

CAMS = ["cam_high", "cam_left_wrist"]
H, W, T = 48, 96, 4
# Saturated colour patches, RGB, each 16 x 24 (JPEG's 8 x 8 blocks and 2 x 2 chroma subsampling fit inside).
PATCHES = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "orange": (255, 140, 0)}


def colour_card(t: int, cam: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB: four colour patches on top, a smooth gradient below that moves with ``t``."""
    frame = np.zeros((H, W, 3), dtype=np.uint8)
    for i, rgb in enumerate(PATCHES.values()):
        frame[:16, 24 * i : 24 * (i + 1)] = rgb
    y, x = np.mgrid[16:H, 0:W]
    frame[16:, :, 0] = (x * 2 + 8 * t) % 256
    frame[16:, :, 1] = (y * 4 + 40 * cam) % 256
    frame[16:, :, 2] = 128
    return frame


def patch_means(frame: np.ndarray) -> dict[str, np.ndarray]:
    """Mean colour of each patch's inner part (JPEG blurs the patch edges)."""
    return {name: frame[4:12, 24 * i + 6 : 24 * i + 18].reshape(-1, 3).mean(axis=0) for i, name in enumerate(PATCHES)}


def write_like_act(path: Path, frames: dict[str, np.ndarray], sim: bool = False) -> dict[str, list[bytes]]:
    """Write an episode the way ACT's recorders do; returns the JPEG buffers per camera."""
    param = [int(cv2.IMWRITE_JPEG_QUALITY), 50]
    encoded = {}
    for cam, video in frames.items():
        encoded[cam] = []
        for frame in video:
            ok, buf = cv2.imencode(".jpg", frame, param)
            assert ok
            encoded[cam].append(buf.tobytes())
    padded_size = max(len(b) for bufs in encoded.values() for b in bufs)
    with h5py.File(path, "w") as root:
        root.attrs["sim"] = sim
        root.attrs["compress"] = True
        obs = root.create_group("observations")
        images = obs.create_group("images")
        for cam, bufs in encoded.items():
            data = images.create_dataset(cam, (T, padded_size), dtype="uint8", chunks=(1, padded_size))
            for t, buf in enumerate(bufs):
                row = np.zeros(padded_size, dtype=np.uint8)
                row[: len(buf)] = np.frombuffer(buf, dtype=np.uint8)
                data[t] = row
        obs.create_dataset("qpos", data=np.arange(T * 14, dtype=np.float32).reshape(T, 14) / 100)
        obs.create_dataset("qvel", data=np.zeros((T, 14), np.float32))
        root.create_dataset("action", data=np.ones((T, 14), np.float32))
        root.create_dataset("compress_len", data=np.array([[len(b) for b in encoded[c]] for c in frames], np.float32))
    return encoded


@pytest.fixture
def act_episode(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, list[bytes]]]:
    frames = {cam: np.stack([colour_card(t, c) for t in range(T)]) for c, cam in enumerate(CAMS)}
    path = tmp_path / "episode_0.hdf5"
    return path, frames, write_like_act(path, frames)


def test_reader_returns_act_frames_in_their_recorded_colours(act_episode):
    path, frames, encoded = act_episode
    with h5py.File(path, "r") as root:
        for cam in CAMS:
            for t in range(T):
                got = read_frame(root, cam, t)
                assert got.shape == (H, W, 3) and got.dtype == np.uint8
                original = frames[cam][t]
                for name, mean in patch_means(got).items():
                    # A swapped channel order would be off by ~255 on red and blue; JPEG at quality 50 by a few.
                    np.testing.assert_allclose(mean, patch_means(original)[name], atol=12, err_msg=f"{cam} t={t} {name}")
                assert np.abs(got.astype(int) - original).mean() < 8
                # ACT's own loader on the same padded buffer: the same frame (decoders may differ by rounding).
                act = cv2.imdecode(root[f"/observations/images/{cam}"][t], 1)
                assert np.abs(got.astype(int) - act).max() <= 4
                # compress_len is the JPEG's length; the rest of the row is padding.
                length = int(root["/compress_len"][CAMS.index(cam), t])
                row = root[f"/observations/images/{cam}"][t]
                assert length == len(encoded[cam][t]) and not row[length:].any()


def test_replay_robot_plays_an_act_compressed_episode(act_episode):
    path, frames, _ = act_episode
    robot = ReplayRobot([path], CAMS, prompt="pick")
    obs = robot.reset()
    assert robot.length == T and not robot.is_sim
    for t in range(T):
        for cam in CAMS:
            red = patch_means(obs["images"][cam])["red"]
            assert red[0] > 200 and red[2] < 40, red  # red stays red: RGB in, RGB out
            assert np.abs(obs["images"][cam].astype(int) - frames[cam][t]).mean() < 8
        np.testing.assert_allclose(obs["state"], np.arange(14 * t, 14 * (t + 1)) / 100, rtol=1e-6)
        robot.step(np.zeros(14, np.float32))
        obs = robot.get_obs()
    robot.close()


def test_our_compressed_episodes_decode_alike_in_acts_loader(tmp_path):
    """``write_episode(compress=True)`` files read by ACT's ``cv2.imdecode``: the recorded RGB frames."""
    frames = {cam: np.stack([colour_card(t, c) for t in range(T)]) for c, cam in enumerate(CAMS)}
    path = write_episode(
        tmp_path / "ours.hdf5", np.zeros((T, 14)), np.zeros((T, 14)), np.zeros((T, 14)), frames, "pick", ["r"] * T,
        compress=True,
    )  # fmt: skip
    with h5py.File(path, "r") as root:
        assert root.attrs["compress"] and root["/compress_len"].shape == (len(CAMS), T)
        for cam in CAMS:
            for t in range(T):
                act = cv2.imdecode(root[f"/observations/images/{cam}"][t], 1)
                for name, mean in patch_means(act).items():
                    np.testing.assert_allclose(mean, patch_means(frames[cam][t])[name], atol=12, err_msg=name)
                assert np.abs(act.astype(int) - read_frame(root, cam, t)).max() <= 4
