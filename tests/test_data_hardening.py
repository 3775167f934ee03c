"""Hardening of the data path against downloaded (untrusted) episodes and corrupt statistics files (issue 13).

Every episode here is a few steps of 16x16 frames written into ``tmp_path``: compressed frames may only be JPEG
or PNG, the check ``load_data`` runs before the first step looks at compressed frames, values must be finite as
training reads them (float32), malformed keys are reported (never raised), and ``dataset_stats.json`` values
that would break normalisation are refused on load while computed statistics always load.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from data_utils.check_data_integrity import DataIntegrityError, check_episode, main
from data_utils.dataset import EpisodicDataset
from data_utils.hdf5_io import FrameDecodeError, decode_jpeg, encode_jpeg, read_frame, write_episode
from data_utils.normalization import STD_FLOOR, NormStats
from data_utils.utils import get_norm_stats, load_data
from tests.conftest import CAMERAS

STEPS, DIM, SIDE = 6, 4, 16


def _frames(side: int = SIDE, seed: int = 0) -> np.ndarray:
    """``(STEPS, side, side, 3)`` uint8 frames with some structure (so JPEG has something to encode)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, size=(STEPS, side, side, 3), dtype=np.uint8)


def _episode(path: Path, compress: bool = True, sides: dict[str, int] | None = None, **arrays) -> Path:
    """A valid ``STEPS``-step episode; ``sides`` gives a camera another frame size, ``arrays`` replaces
    ``action``/``qpos``/``qvel`` (written with their own dtype afterwards)."""
    sides = sides or {}
    rng = np.random.default_rng(1)
    base = {name: rng.normal(size=(STEPS, DIM)) for name in ("action", "qpos", "qvel")}
    images = {cam: _frames(sides.get(cam, SIDE), seed=i) for i, cam in enumerate(CAMERAS)}
    write_episode(path, base["action"], base["qpos"], base["qvel"], images, "pick", ["r"] * STEPS, compress=compress)
    keys = {"action": "/action", "qpos": "/observations/qpos", "qvel": "/observations/qvel"}
    with h5py.File(path, "r+") as root:
        for name, value in arrays.items():
            del root[keys[name]]
            root.create_dataset(keys[name], data=value)
    return path


def _set_frame(path: Path, camera: str, t: int, buffer: bytes) -> None:
    """Store ``buffer`` as frame ``t`` of a compressed ``camera`` (rewriting the padded dataset if it is wider)."""
    key = f"/observations/images/{camera}"
    with h5py.File(path, "r+") as root:
        padded = root[key][()]
        width = max(padded.shape[1], len(buffer))
        out = np.zeros((padded.shape[0], width), dtype=np.uint8)
        out[:, : padded.shape[1]] = padded
        out[t] = 0
        out[t, : len(buffer)] = np.frombuffer(buffer, dtype=np.uint8)
        del root[key]
        root.create_dataset(key, data=out)


def _encoded(fmt: str, side: int = SIDE) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_frames(side)[0]).save(buffer, format=fmt)
    return buffer.getvalue()


def _load(directory: Path, **kwargs):
    return load_data(
        [str(directory)], None, CAMERAS, 2, 2, 4, rank0_print=lambda *a: None, train_ratio=1.0, **kwargs
    )


# ---- compressed frames: JPEG or PNG only --------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP", "PPM"])
def test_frames_of_other_formats_reach_no_decoder(fmt):
    buffer = _encoded(fmt)
    Image.open(io.BytesIO(buffer)).load()  # a valid image that Pillow would otherwise decode
    with pytest.raises(FrameDecodeError, match=r"ep\.hdf5 cam_high: not a JPEG \(FF D8 FF\) or PNG") as info:
        decode_jpeg(np.frombuffer(buffer + b"\0" * 7, dtype=np.uint8), source="ep.hdf5 cam_high")
    assert buffer[:4].hex(" ").upper() in str(info.value)  # the bytes it found


def test_png_frames_decode_and_the_decoder_is_restricted_to_the_frame_format(monkeypatch):
    frame = _frames()[0]
    buffer = io.BytesIO()
    Image.fromarray(frame[..., ::-1]).save(buffer, format="PNG")  # what cv2.imencode(".png", rgb) stores
    opened_with = []
    original = Image.open

    def spy(fp, mode="r", formats=None):
        opened_with.append(formats)
        return original(fp, mode, formats)

    monkeypatch.setattr(Image, "open", spy)
    assert np.array_equal(decode_jpeg(buffer.getvalue() + b"\0" * 5), frame)  # lossless, cv2 channel order
    decode_jpeg(encode_jpeg(frame))
    assert [tuple(f) if f is not None else None for f in opened_with] == [("PNG",), ("JPEG",)]


def test_frames_over_the_pixel_limit_are_refused_before_decoding(monkeypatch):
    buffer = encode_jpeg(_frames(side=40)[0])  # 1600 pixels: between the limit and twice it, Pillow only warns
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(FrameDecodeError, match="40x40 pixels is over"):
        decode_jpeg(buffer, source="frame")


def test_training_names_file_camera_and_frame_of_a_bad_frame(tmp_path):
    path = _episode(tmp_path / "ep.hdf5")
    _set_frame(path, "cam_left_wrist", 3, _encoded("GIF"))
    with h5py.File(path, "r") as root:
        with pytest.raises(FrameDecodeError, match=r"ep\.hdf5: key '/observations/images/cam_left_wrist' "
                                                   r"\(camera 'cam_left_wrist'\), frame 3: not a JPEG"):
            read_frame(root, "cam_left_wrist", 3)
    stats, lengths = get_norm_stats([str(path)])
    dataset = EpisodicDataset([str(path)], CAMERAS, stats, [0], lengths, 4, rank0_print=lambda *a: None)
    dataset[2]  # the other frames are fine
    with pytest.raises(FrameDecodeError, match=r"cam_left_wrist'\), frame 3"):
        dataset[3]


# ---- the check before the first step covers compressed episodes ------------------------------------------
def test_precheck_finds_a_frame_of_another_format_anywhere_in_a_compressed_episode(tmp_path):
    path = _episode(tmp_path / "ep.hdf5")
    _set_frame(path, "cam_right_wrist", 4, _encoded("BMP"))
    problems = check_episode(path, CAMERAS, check_images=False)
    assert len(problems) == 1, problems
    line = problems[0]
    assert line.startswith(f"{path}: key '/observations/images/cam_right_wrist'") and "camera 'cam_right_wrist'" in line
    assert "frame(s) 4;" in line and "42 4D" in line  # BMP's magic "BM"
    with pytest.raises(DataIntegrityError, match="cam_right_wrist"):
        _load(tmp_path)


def test_precheck_decodes_one_frame_per_compressed_camera(tmp_path):
    path = _episode(tmp_path / "ep.hdf5")
    _set_frame(path, "cam_high", 0, b"\xff\xd8\xff" + b"\x17" * 40)  # JPEG magic, then garbage
    problems = check_episode(path, CAMERAS, check_images=False)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: key '/observations/images/cam_high'"), problems
    assert "frame 0 of camera 'cam_high' decodable" in problems[0] and "JPEG frame does not decode" in problems[0]
    with pytest.raises(DataIntegrityError, match=r"ep\.hdf5: key '/observations/images/cam_high'"):
        _load(tmp_path)


def test_precheck_compares_camera_resolutions_when_frames_are_not_resized(tmp_path):
    path = _episode(tmp_path / "ep.hdf5", sides={"cam_left_wrist": 8})
    assert check_episode(path, CAMERAS, check_images=False) == []  # resizing to one image size: fine
    problems = check_episode(path, CAMERAS, check_images=False, one_resolution=True)
    assert problems == [
        f"{path}: key '/observations/images': expected one resolution for all cameras (no image size to resize the "
        "frames to), found 'cam_high' 16x16, 'cam_left_wrist' 8x8, 'cam_right_wrist' 16x16"
    ]
    with pytest.raises(DataIntegrityError, match="'cam_left_wrist' 8x8"):
        _load(tmp_path)  # no image_size_stable: samples stack the cameras' frames as stored
    data_args = type("DataArgs", (), {"image_size_stable": "(16,16)", "use_reasoning": False})()
    train, *_ = _load(tmp_path, config={"data_args": data_args})
    assert tuple(train[0]["image"].shape) == (3, 3, 16, 16)


def test_full_check_finds_a_frame_whose_resolution_changes(tmp_path):
    path = _episode(tmp_path / "ep.hdf5")
    _set_frame(path, "cam_high", 5, encode_jpeg(_frames(side=12)[0]))
    assert check_episode(path, CAMERAS, check_images=False) == []  # one frame per camera is decoded
    assert check_episode(path, CAMERAS, check_images=True) == [
        f"{path}: key '/observations/images/cam_high': expected every frame of camera 'cam_high' at 16x16 "
        "(as frame 0), found frame 5 at 12x12"
    ]


# ---- values finite as training reads them, malformed keys reported ---------------------------------------
def test_values_must_be_finite_in_float32(tmp_path):
    qpos = np.random.default_rng(0).normal(size=(STEPS, DIM))
    qpos[4, 3] = 1e39  # finite as float64, inf as the float32 training reads
    path = _episode(tmp_path / "ep.hdf5", compress=False, qpos=qpos)
    problems = check_episode(path, CAMERAS)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: key '/observations/qpos': expected values finite in float32")
    assert "first at index (4, 3)" in problems[0] and "1e+39" in problems[0]
    with pytest.raises(DataIntegrityError, match="observations/qpos"):
        _load(tmp_path)


@pytest.mark.parametrize(
    ("key", "found"),
    [
        ("/action", "a group"),
        ("/observations/qpos", "a group"),
        ("/observations/qvel", "a group"),
        ("/language_raw", "a group"),
        ("/observations/images/cam_high", "a group"),
        ("/substep_reasonings", "a group"),
        ("/action", "a dangling link"),
    ],
)
def test_malformed_keys_are_problems_not_exceptions(tmp_path, key, found):
    path = _episode(tmp_path / "ep.hdf5")
    with h5py.File(path, "r+") as root:
        del root[key]
        if found == "a group":
            root.create_group(key)
        else:
            root[key] = h5py.SoftLink("/nowhere")
    for check_images in (False, True):
        problems = check_episode(path, CAMERAS, check_images=check_images)
        assert f"{path}: key '{key}': expected a dataset, found {found}" in problems, problems


def test_anything_else_malformed_is_reported_too(tmp_path):
    path = _episode(tmp_path / "ep.hdf5")
    with h5py.File(path, "r+") as root:
        root.attrs["compress"] = np.array([1, 0])  # bool() of it raises
    (problem,) = check_episode(path, CAMERAS, check_images=False)
    assert problem.startswith(f"{path}: could not be checked (ValueError:")


def test_keys_may_not_read_other_files(tmp_path):
    other = tmp_path / "elsewhere.h5"
    with h5py.File(other, "w") as root:
        root.create_dataset("secret", data=np.zeros((STEPS, DIM)))
        root.create_group("observations").create_dataset("qpos", data=np.zeros((STEPS, DIM)))
    linked = _episode(tmp_path / "linked.hdf5")
    with h5py.File(linked, "r+") as root:
        del root["/action"]
        root["/action"] = h5py.ExternalLink(str(other), "/secret")
    assert check_episode(linked, CAMERAS, check_images=False) == [
        f"{linked}: key '/action': expected a dataset stored in this file, found an external link at '/action'"
    ]
    virtual = _episode(tmp_path / "virtual.hdf5")
    with h5py.File(virtual, "r+") as root:
        layout = h5py.VirtualLayout(shape=(STEPS, DIM), dtype=np.float64)
        layout[:] = h5py.VirtualSource(str(other), "secret", shape=(STEPS, DIM))
        del root["/observations/qvel"]
        root["observations"].create_virtual_dataset("qvel", layout)
    assert check_episode(virtual, CAMERAS, check_images=False) == [
        f"{virtual}: key '/observations/qvel': expected a dataset stored in this file, found a virtual dataset "
        "(mapped from other files)"
    ]
    grouped = _episode(tmp_path / "grouped.hdf5")  # a link higher up the path counts as well
    with h5py.File(grouped, "r+") as root:
        del root["/observations"]
        root["/observations"] = h5py.ExternalLink(str(other), "/observations")
    problems = check_episode(grouped, CAMERAS, check_images=False)
    assert f"{grouped}: key '/observations/qpos': expected a dataset stored in this file, found an external link at " \
        "'/observations'" in problems, problems


def test_text_must_decode_as_training_reads_it(tmp_path):
    path = _episode(tmp_path / "ep.hdf5")
    with h5py.File(path, "r+") as root:
        del root["/language_raw"]
        root.create_dataset("language_raw", data=np.array([b"\xff\xfe pick"]))
    (problem,) = check_episode(path, CAMERAS, check_images=False)
    assert problem.startswith(f"{path}: key '/language_raw': expected UTF-8 text, found entry 0 does not decode")


def test_cli_reports_compressed_problems_and_one_resolution(tmp_path, capsys):
    _episode(tmp_path / "ep.hdf5", sides={"cam_high": 8})
    args = [str(tmp_path), "--camera_names", *CAMERAS]
    assert main(args) == 0
    assert main([*args, "--one_resolution", "--skip_images"]) == 1
    assert "'cam_high' 8x8" in capsys.readouterr().out


# ---- NormStats: refuse values that break normalisation, always load computed ones --------------------------
def _stats_file(tmp_path: Path, **changes) -> Path:
    data = NormStats(
        action_mean=np.zeros(3), action_std=np.ones(3), action_min=-np.ones(3), action_max=np.ones(3),
        qpos_mean=np.zeros(2), qpos_std=np.ones(2),
    ).to_dict()
    for key, (index, value) in changes.items():
        data[key][index] = value
    path = tmp_path / "dataset_stats.json"
    path.write_text(json.dumps(data))  # json writes NaN/Infinity tokens, which json.loads reads back
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"qpos_mean": (1, float("nan"))}, r"key 'qpos_mean': non-finite \(in float32\) at indices \[1\]"),
        ({"action_max": (2, float("inf"))}, r"key 'action_max': non-finite \(in float32\) at indices \[2\]"),
        ({"action_mean": (0, 1e39)}, r"key 'action_mean': non-finite \(in float32\) at indices \[0\]"),
        ({"qpos_std": (0, 0.0)}, r"key 'qpos_std': std must be > 0, at indices \[0\]"),
        ({"action_std": (2, -1.0)}, r"key 'action_std': std must be > 0, at indices \[2\]"),
        ({"action_min": (1, 1.0)}, r"keys 'action_min'/'action_max': min must be < max, at indices \[1\]"),
        ({"action_min": (0, 5.0), "action_max": (0, 4.0)}, r"min must be < max, at indices \[0\]"),
        ({"qpos_std": (1, "wide")}, r"key 'qpos_std' must be a list of numbers"),
    ],
)
def test_corrupt_stats_files_are_refused_naming_file_key_and_indices(tmp_path, changes, message):
    path = _stats_file(tmp_path, **changes)
    with pytest.raises(ValueError, match=message) as info:
        NormStats.load(tmp_path)
    assert str(info.value).startswith(f"{path}: ")


def test_stats_file_that_is_not_json_names_the_file(tmp_path):
    path = tmp_path / "dataset_stats.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path}: not a JSON statistics file"):
        NormStats.load(path)


@pytest.mark.parametrize("constant", [0.5, 4096.0, -1e6])
def test_computed_stats_of_constant_dimensions_load_and_normalise_finitely(tmp_path, constant):
    """A gripper that never moves: std is floored, min/max kept apart even where float32 swallows the margin."""
    rng = np.random.default_rng(0)
    action, qpos = rng.normal(size=(STEPS, DIM)), rng.normal(size=(STEPS, DIM))
    action[:, 1] = qpos[:, 2] = constant
    path = _episode(tmp_path / "ep.hdf5", compress=False, action=action, qpos=qpos)
    stats, _ = get_norm_stats([str(path)])
    loaded = NormStats.load(stats.save(tmp_path))
    assert loaded.qpos_std[2] >= np.float32(STD_FLOOR)
    assert loaded.action_min[1] < np.float32(constant) < loaded.action_max[1]
    normalized = loaded.normalize_action(action.astype(np.float32))
    assert np.isfinite(normalized).all() and np.abs(normalized).max() <= 1.0 + 1e-6
    assert np.allclose(loaded.unnormalize_action(normalized)[:, 1], constant, rtol=1e-6)
    assert np.isfinite(loaded.normalize_state(qpos.astype(np.float32))).all()
