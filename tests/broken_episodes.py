"""A folder of deliberately broken episodes, each with the (key, fragment) its error line must name."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np

# file name -> (key the error must name, a fragment of what was found)
EXPECTED_PROBLEMS: dict[str, tuple[str, str]] = {
    "missing_action.hdf5": ("/action", "found nothing"),
    "wrong_state_dim.hdf5": ("/observations/qpos", "found shape (30, 7)"),
    "short_qpos.hdf5": ("/observations/qpos", "found shape (20, 14)"),
    "nan_action.hdf5": ("/action", "NaN/inf"),
    "missing_camera.hdf5": ("/observations/images/cam_right_wrist", "found nothing"),
    "short_camera.hdf5": ("/observations/images/cam_high", "found 29 frames"),
    "float_images.hdf5": ("/observations/images/cam_left_wrist", "dtype float32"),
    "not_hdf5.hdf5": ("", "does not open as HDF5"),
    "corrupt_jpeg.hdf5": ("/observations/images/cam_high", "of another format"),
    "missing_language.hdf5": ("/language_raw", "found nothing"),
    "nan_qvel.hdf5": ("/observations/qvel", "NaN/inf"),
}


def write_broken_episodes(good_episode: Path, out_dir: Path) -> Path:
    """Copy ``good_episode`` once per defect in ``EXPECTED_PROBLEMS`` and break each copy."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in EXPECTED_PROBLEMS:
        path = out_dir / name
        if name == "not_hdf5.hdf5":
            path.write_text("this is not an HDF5 file")
            continue
        shutil.copy(good_episode, path)
        with h5py.File(path, "r+") as root:
            _break(root, name)
    return out_dir


def _replace(root: h5py.File, key: str, data: np.ndarray) -> None:
    del root[key]
    root.create_dataset(key, data=data)


def _break(root: h5py.File, name: str) -> None:
    if name == "missing_action.hdf5":
        del root["/action"]
    elif name == "wrong_state_dim.hdf5":
        _replace(root, "/observations/qpos", root["/observations/qpos"][:, :7])
    elif name == "short_qpos.hdf5":
        _replace(root, "/observations/qpos", root["/observations/qpos"][:20])
    elif name == "nan_action.hdf5":
        action = root["/action"][()]
        action[3, 2] = np.nan
        _replace(root, "/action", action)
    elif name == "missing_camera.hdf5":
        del root["/observations/images/cam_right_wrist"]
    elif name == "short_camera.hdf5":
        _replace(root, "/observations/images/cam_high", root["/observations/images/cam_high"][:-1])
    elif name == "float_images.hdf5":
        images = root["/observations/images/cam_left_wrist"][()].astype(np.float32)
        _replace(root, "/observations/images/cam_left_wrist", images)
    elif name == "missing_language.hdf5":
        del root["/language_raw"]
    elif name == "nan_qvel.hdf5":
        qvel = root["/observations/qvel"][()]
        qvel[0, 0] = np.inf
        _replace(root, "/observations/qvel", qvel)
    elif name == "corrupt_jpeg.hdf5":
        # A compressed episode whose frames are not JPEG: found only when frames are decoded.
        root.attrs["compress"] = True
        for camera in list(root["/observations/images"].keys()):
            length = root[f"/observations/images/{camera}"].shape[0]
            _replace(root, f"/observations/images/{camera}", np.full((length, 64), 7, dtype=np.uint8))
    else:
        raise KeyError(name)
