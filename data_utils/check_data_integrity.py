"""Check episodes before training: one line per problem, naming file, key, expected and found.

HDF5 directories and LeRobotDataset roots alike (``data_utils.episode_source``); for a LeRobot root
the checks are those of ``LeRobotRoot.problems`` (features, dims, finite values, videos covering each
episode's span) plus decoded frames (one per camera before training, all with the CLI's image check).

Usage::

    python -m data_utils.check_data_integrity DIR [DIR ...] --camera_names cam_high cam_left_wrist \
        [--state_dim 14 --action_dim 14] [--skip_images] [--one_resolution]

Exit status 1 when any episode is bad. Episodes without a reasoning annotation (neither
``/substep_reasonings`` nor ``/reasoning``) are reported as a warning only (exit status 0): training
with ``use_reasoning`` answers their steps without reasoning. ``load_data`` runs the same checks
before it builds a dataset, decoding one frame per camera of a compressed episode instead of every
frame (see :func:`check_episode`). ``--one_resolution`` also requires the cameras of an episode to
share one resolution, as training without an image size to resize to does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import h5py
import numpy as np

from data_utils.episode_source import (
    find_episodes,
    lerobot_camera_key,
    lerobot_episode_ref,
    lerobot_root,
    split_by_format,
)
from data_utils.hdf5_io import (
    ACTION_KEY,
    EPISODE_REASONING_KEY,
    FRAME_MAGIC,
    IMAGES_GROUP,
    LANGUAGE_KEY,
    QPOS_KEY,
    QVEL_KEY,
    REASONING_KEY,
    FrameDecodeError,
    decode_text,
    frame_format,
    has_reasoning,
    is_compressed,
    read_frame,
)
from data_utils.lerobot_io import LeRobotFormatError


class DataIntegrityError(ValueError):
    """Raised with every problem found, one per line."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) in the episodes:\n" + "\n".join(self.problems))


def _shape(expected_len: str, dim: int | None) -> str:
    return f"({expected_len}, {dim if dim is not None else 'D'})"


def _resolution(frame_shape: Sequence[int]) -> str:
    return f"{frame_shape[1]}x{frame_shape[0]}"  # width x height, as image sizes are given


def _outside_file(root: h5py.File, key: str) -> str | None:
    """What makes ``key`` read from outside this file (an external link on its path, a virtual dataset), else ``None``.

    A downloaded episode must not make training read other files of the machine it runs on.
    """
    parts = key.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        sub = "/" + "/".join(parts[:depth])
        if isinstance(root.get(sub, getlink=True), h5py.ExternalLink):
            return f"an external link at '{sub}'"
    node = root.get(key)
    if isinstance(node, h5py.Dataset) and node.is_virtual:
        return "a virtual dataset (mapped from other files)"
    return None


def _first_index(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def check_episode(
    path: str | os.PathLike,
    camera_names: Sequence[str],
    state_dim: int | None = None,
    action_dim: int | None = None,
    check_images: bool = True,
    one_resolution: bool = False,
) -> list[str]:
    """Return the problems of one episode file (empty list when it is fine).

    ``check_images=False`` is what ``load_data`` runs on every episode before training: shapes and
    dtypes of every camera, and for compressed episodes the format (by its first bytes) of every
    frame and one decoded frame per camera with its resolution; no raw pixels are read.
    ``check_images=True`` also decodes every compressed frame (each must keep the camera's
    resolution) and reads the first and last raw frame. ``one_resolution``: the cameras of the
    episode must share one resolution (training without an image size to resize them to).
    A malformed file is reported as a problem, never raised.
    """
    path = str(path)
    problems: list[str] = []
    try:
        root = h5py.File(path, "r")
    except OSError as err:
        return [f"{path}: file does not open as HDF5 ({err})"]
    with root:
        try:
            _check_open_episode(root, path, problems, camera_names, state_dim, action_dim, check_images, one_resolution)
        except Exception as err:  # noqa: BLE001 - whatever a malformed file raises is a data problem
            problems.append(f"{path}: could not be checked ({type(err).__name__}: {err})")
    return problems


def _check_open_episode(
    root: h5py.File,
    path: str,
    problems: list[str],
    camera_names: Sequence[str],
    state_dim: int | None,
    action_dim: int | None,
    check_images: bool,
    one_resolution: bool,
) -> None:
    def bad(key: str, expected: str, found: str) -> None:
        problems.append(f"{path}: key '{key}': expected {expected}, found {found}")

    def dataset(key: str, required: bool) -> h5py.Dataset | None:
        """``root[key]`` if it is a dataset of this file; otherwise report it (when present or ``required``)."""
        if key not in root:
            if required:
                bad(key, "a dataset", "nothing")
            return None
        outside = _outside_file(root, key)
        node = root.get(key)
        if outside is not None:
            bad(key, "a dataset stored in this file", outside)
        elif not isinstance(node, h5py.Dataset):
            bad(key, "a dataset", "a group" if isinstance(node, h5py.Group) else "a dangling link")
        else:
            return node
        return None

    action, qpos = dataset(ACTION_KEY, True), dataset(QPOS_KEY, True)
    if action is None or qpos is None:
        return
    length = action.shape[0] if action.ndim >= 1 else 0
    if action.ndim != 2 or (action_dim is not None and action.shape[1] != action_dim):
        bad(ACTION_KEY, f"shape {_shape('T', action_dim)}", f"shape {action.shape}")
    if length == 0:
        bad(ACTION_KEY, "at least one step", "0 steps")
    if qpos.ndim != 2 or qpos.shape[0] != length or (state_dim is not None and qpos.shape[1] != state_dim):
        bad(QPOS_KEY, f"shape {_shape(str(length), state_dim)}", f"shape {qpos.shape}")
    qvel = dataset(QVEL_KEY, False)
    if qvel is not None and qvel.shape[:1] != (length,):
        bad(QVEL_KEY, f"{length} steps (as {ACTION_KEY})", f"shape {qvel.shape}")
    for key, node in ((ACTION_KEY, action), (QPOS_KEY, qpos), (QVEL_KEY, qvel)):
        if node is None:
            continue
        if node.dtype.kind not in "iuf":
            bad(key, "numeric values (int or float)", f"dtype {node.dtype}")
            continue
        # Training reads these as float32: a float64 value beyond float32's range (1e39) becomes inf there.
        with np.errstate(over="ignore"):  # the overflow is what is looked for
            values = node[()].astype(np.float32)
        finite = np.isfinite(values)
        if not finite.all():
            count = int(finite.size - finite.sum())
            bad(
                key,
                "values finite in float32 (what training reads)",
                f"{count} NaN/inf value(s) in float32 (first at index {_first_index(~finite)}, "
                f"stored {node.dtype}: {node[_first_index(~finite)]})",
            )

    language = dataset(LANGUAGE_KEY, False)
    if LANGUAGE_KEY not in root:
        bad(LANGUAGE_KEY, "the instruction, shape (1,)", "nothing")
    elif language is not None:
        if language.shape != (1,):
            bad(LANGUAGE_KEY, "shape (1,)", f"shape {language.shape}")
        else:
            _check_text(language, LANGUAGE_KEY, bad)
    reasoning = dataset(REASONING_KEY, False)
    if reasoning is not None:
        if reasoning.shape[:1] != (length,):
            bad(REASONING_KEY, f"shape ({length},)", f"shape {reasoning.shape}")
        else:
            _check_text(reasoning, REASONING_KEY, bad)
    # The reference reads the episode-level fallback at index 0: any non-empty array (or a scalar) will do.
    episode_reasoning = dataset(EPISODE_REASONING_KEY, False)
    if episode_reasoning is not None:
        shape = episode_reasoning.shape
        if shape != () and (len(shape) != 1 or shape[0] < 1):
            bad(EPISODE_REASONING_KEY, "shape (1,)", f"shape {shape}")
        else:
            _check_text(episode_reasoning, EPISODE_REASONING_KEY, bad)

    compressed = is_compressed(root)
    resolutions: dict[str, tuple[int, ...]] = {}
    for camera in camera_names:
        key = f"{IMAGES_GROUP}/{camera}"
        if key not in root:
            bad(key, f"camera '{camera}' present", "nothing")
            continue
        images = dataset(key, True)
        if images is None:
            continue
        if images.shape[:1] != (length,):
            bad(key, f"{length} frames (as {ACTION_KEY})", f"{images.shape[0] if images.ndim else 0} frames")
        if images.dtype != np.uint8:
            bad(key, "dtype uint8", f"dtype {images.dtype}")
        if compressed and images.ndim != 2:
            bad(key, "shape (T, L): one zero-padded JPEG/PNG buffer per frame", f"shape {images.shape}")
        if not compressed and (images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape[1:3]):
            bad(key, "shape (T, H, W, 3)", f"shape {images.shape}")
        if problems:
            continue  # frames are looked at only in an otherwise sound episode
        if compressed:
            resolution = _check_compressed_frames(root, camera, key, length, check_images, bad)
        else:
            resolution = tuple(images.shape[1:])
            if check_images:
                for t in (0, length - 1):
                    try:
                        read_frame(root, camera, t)
                    except Exception as err:  # noqa: BLE001 - any read failure is a data problem
                        bad(key, f"frame {t} readable", f"{type(err).__name__}: {err}")
                        break
        if resolution is not None:
            resolutions[camera] = resolution
    if one_resolution and len(set(resolutions.values())) > 1:
        found = ", ".join(f"'{cam}' {_resolution(res)}" for cam, res in resolutions.items())
        bad(IMAGES_GROUP, "one resolution for all cameras (no image size to resize the frames to)", found)


def _check_text(node: h5py.Dataset, key: str, bad: Callable[[str, str, str], None]) -> None:
    """Every string of ``node`` decodes (as UTF-8) the way training reads it."""
    values = np.asarray(node[()]).reshape(-1)
    for index, value in enumerate(values):
        try:
            decode_text(value)
        except (UnicodeDecodeError, ValueError) as err:
            bad(key, "UTF-8 text", f"entry {index} does not decode ({err})")
            return


def _check_compressed_frames(
    root: h5py.File,
    camera: str,
    key: str,
    length: int,
    decode_all: bool,
    bad: Callable[[str, str, str], None],
) -> tuple[int, ...] | None:
    """Check the frames of one compressed camera; returns its resolution ``(H, W, 3)`` (``None`` if unknown).

    Every frame's first bytes must be a JPEG or PNG magic number (so a frame deep in the episode cannot
    stop training); frame 0 is decoded (every frame with ``decode_all``, each of frame 0's shape).
    """
    images = root[key]
    magic_len = max(len(magic) for magic in FRAME_MAGIC.values())
    prefixes = images[:, :magic_len]
    wrong = [t for t in range(length) if frame_format(prefixes[t].tobytes()) is None]
    if wrong:
        shown = ", ".join(str(t) for t in wrong[:10]) + (", ..." if len(wrong) > 10 else "")
        bad(
            key,
            f"JPEG (FF D8 FF) or PNG (89 50 4E 47) frames of camera '{camera}'",
            f"{len(wrong)} frame(s) of another format: frame(s) {shown}; frame {wrong[0]} starts with "
            f"{prefixes[wrong[0]].tobytes().hex(' ').upper()}",
        )
        return None
    resolution: tuple[int, ...] | None = None
    for t in range(length) if decode_all else (0,):
        try:
            frame = read_frame(root, camera, t)
        except FrameDecodeError as err:
            bad(key, f"frame {t} of camera '{camera}' decodable", str(err))
            return None
        if frame.ndim != 3 or frame.shape[-1] != 3 or 0 in frame.shape:
            bad(key, f"frame {t} of camera '{camera}' of shape (H, W, 3)", f"shape {frame.shape}")
            return None
        if resolution is None:
            resolution = frame.shape
        elif frame.shape != resolution:
            expected = f"every frame of camera '{camera}' at {_resolution(resolution)} (as frame 0)"
            bad(key, expected, f"frame {t} at {_resolution(frame.shape)}")
            return None
    return resolution


def check_lerobot_root(
    root_dir: str,
    episode_indices: Sequence[int] | None,
    camera_names: Sequence[str],
    state_dim: int | None = None,
    action_dim: int | None = None,
    check_images: bool = True,
    one_resolution: bool = False,
) -> list[str]:
    """Problems of a LeRobot root's episodes ``episode_indices`` (default: all).

    Decodes every frame of those episodes with ``check_images``, else the first frame of each camera.
    """
    try:
        root = lerobot_root(root_dir)
    except (LeRobotFormatError, OSError, ValueError) as err:
        return [f"{root_dir}: not a readable LeRobot dataset ({err})"]
    keys = [lerobot_camera_key(root, camera) for camera in camera_names]
    problems = root.problems(keys)
    info = os.path.join(root_dir, "meta", "info.json")
    for role, key, dim, expected in (
        ("state", root.state_key, root.state_dim, state_dim),
        ("action", root.action_key, root.action_dim, action_dim),
    ):
        if expected is not None and dim != expected:
            problems.append(f"{info}: feature '{key}' ({role}) has shape ({dim},), expected ({expected},)")
    cameras = [k for k in keys if root.features.get(k, {}).get("dtype") in ("video", "image")]
    if one_resolution and len({root.image_shape(k) for k in cameras}) > 1:
        shapes = ", ".join(f"{k} {_resolution(root.image_shape(k))}" for k in cameras)
        problems.append(f"{info}: cameras differ in resolution ({shapes}); give an image size to resize to")
    indices = [ep.index for ep in root.episodes] if episode_indices is None else list(episode_indices)
    if not check_images:
        indices = indices[:1]
    for index in indices:
        try:
            length = root.episode(index).length if check_images else 1
        except LeRobotFormatError as err:
            problems.append(str(err))
            continue
        for camera in cameras:
            for t in range(length):
                try:
                    root.read_frame(camera, index, t)
                except Exception as err:  # noqa: BLE001 - FFmpeg and Pillow raise many types on bad data
                    problems.append(f"{root_dir}: camera '{camera}', episode {index}, frame {t}: {err}")
                    break  # one line per camera and episode
    return problems


def check_episodes(
    paths: Sequence[str],
    camera_names: Sequence[str],
    state_dim: int | None = None,
    action_dim: int | None = None,
    check_images: bool = True,
    one_resolution: bool = False,
) -> list[str]:
    """Problems of all ``paths`` (see :func:`check_episode`); dims default to the first good episode's so files must agree.

    LeRobot episode references (``<root>#episode=<i>``) are checked per root (:func:`check_lerobot_root`).
    """
    paths, lerobot = split_by_format(paths)
    problems = _check_hdf5_episodes(paths, camera_names, state_dim, action_dim, check_images, one_resolution)
    for root_dir, indices in lerobot.items():
        problems += check_lerobot_root(root_dir, indices, camera_names, state_dim, action_dim, check_images, one_resolution)
    return problems


def _check_hdf5_episodes(
    paths: Sequence[str],
    camera_names: Sequence[str],
    state_dim: int | None,
    action_dim: int | None,
    check_images: bool,
    one_resolution: bool,
) -> list[str]:
    problems: list[str] = []
    for path in paths:
        found = check_episode(path, camera_names, state_dim, action_dim, check_images, one_resolution)
        problems.extend(found)
        if not found and (state_dim is None or action_dim is None):
            with h5py.File(path, "r") as root:
                state_dim = state_dim if state_dim is not None else int(root[QPOS_KEY].shape[1])
                action_dim = action_dim if action_dim is not None else int(root[ACTION_KEY].shape[1])
    return problems


def episodes_without_reasoning(paths: Sequence[str]) -> list[str]:
    """The episodes among ``paths`` with neither ``/substep_reasonings`` nor ``/reasoning``.

    Files that do not open are skipped: :func:`check_episode` reports them.
    """
    missing = []
    paths, lerobot = split_by_format(paths)
    for root_dir, indices in lerobot.items():
        try:
            root = lerobot_root(root_dir)
        except (LeRobotFormatError, OSError, ValueError):
            continue  # check_lerobot_root reports it
        if root.reasoning_key is None:
            missing += [lerobot_episode_ref(root_dir, i) for i in indices]
    for path in paths:
        try:
            root = h5py.File(path, "r")
        except OSError:
            continue
        with root:
            if not has_reasoning(root):
                missing.append(str(path))
    return missing


def reasoning_warning(missing: Sequence[str], total: int) -> str:
    """One warning line naming the ``missing`` episodes (of ``total``) that have no reasoning annotation."""
    return (
        f"WARNING: {len(missing)} of {total} episode(s) have no reasoning ('{REASONING_KEY}' or "
        f"'{EPISODE_REASONING_KEY}'); with use_reasoning=True their steps are trained without reasoning "
        f"(answer '<|im_end|>' only): {', '.join(missing)}"
    )


def _find_paths(
    dataset_dirs: Sequence[str], name_filter: Callable[[str], bool] | None
) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    paths: list[str] = []
    for directory in dataset_dirs:
        try:
            paths.extend(find_episodes(directory, name_filter=name_filter))
        except (FileNotFoundError, LeRobotFormatError) as err:
            problems.append(str(err))
    return paths, problems


def check_dirs(
    dataset_dirs: Sequence[str],
    camera_names: Sequence[str],
    state_dim: int | None = None,
    action_dim: int | None = None,
    check_images: bool = True,
    name_filter: Callable[[str], bool] | None = None,
    one_resolution: bool = False,
) -> list[str]:
    """Problems of every episode below ``dataset_dirs`` (warnings such as missing reasoning are not problems)."""
    paths, problems = _find_paths(dataset_dirs, name_filter)
    return problems + check_episodes(paths, camera_names, state_dim, action_dim, check_images, one_resolution)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "dataset_dirs", nargs="+", help="directories searched recursively for *.hdf5, or LeRobotDataset roots"
    )
    parser.add_argument("--camera_names", nargs="+", required=True)
    parser.add_argument("--state_dim", type=int, default=None)
    parser.add_argument("--action_dim", type=int, default=None)
    parser.add_argument(
        "--skip_images",
        action="store_true",
        help="what training checks: image shapes, and one decoded frame per camera of a compressed episode",
    )
    parser.add_argument(
        "--one_resolution", action="store_true", help="the cameras of an episode must share one resolution"
    )
    args = parser.parse_args(argv)
    paths, problems = _find_paths(args.dataset_dirs, None)
    problems += check_episodes(
        paths, args.camera_names, args.state_dim, args.action_dim, not args.skip_images, args.one_resolution
    )
    for line in problems:
        print(line)
    missing = episodes_without_reasoning(paths)
    if missing:
        print(reasoning_warning(missing, len(paths)))
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print("all episodes OK" + (" (with the warning above)" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
