"""Check HDF5 episodes before training: one line per problem, naming file, key, expected and found.

Usage::

    python -m data_utils.check_data_integrity DIR [DIR ...] --camera_names cam_high cam_left_wrist \
        [--state_dim 14 --action_dim 14] [--skip_images]

Exit status 1 when any episode is bad. Episodes without a reasoning annotation (neither
``/substep_reasonings`` nor ``/reasoning``) are reported as a warning only (exit status 0): training
with ``use_reasoning`` answers their steps without reasoning. ``load_data`` runs the same checks
(without decoding every image) before it builds a dataset.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import h5py
import numpy as np

from data_utils.hdf5_io import (
    ACTION_KEY,
    EPISODE_REASONING_KEY,
    IMAGES_GROUP,
    LANGUAGE_KEY,
    QPOS_KEY,
    QVEL_KEY,
    REASONING_KEY,
    find_all_hdf5,
    has_reasoning,
    is_compressed,
    read_frame,
)


class DataIntegrityError(ValueError):
    """Raised with every problem found, one per line."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) in the episodes:\n" + "\n".join(self.problems))


def _shape(expected_len: str, dim: int | None) -> str:
    return f"({expected_len}, {dim if dim is not None else 'D'})"


def check_episode(
    path: str | os.PathLike,
    camera_names: Sequence[str],
    state_dim: int | None = None,
    action_dim: int | None = None,
    check_images: bool = True,
) -> list[str]:
    """Return the problems of one episode file (empty list when it is fine).

    ``check_images=False`` checks image shapes and dtypes but decodes/reads no pixels: cheap
    enough to run on every episode before training.
    """
    path = str(path)
    problems: list[str] = []

    def bad(key: str, expected: str, found: str) -> None:
        problems.append(f"{path}: key '{key}': expected {expected}, found {found}")

    try:
        root = h5py.File(path, "r")
    except OSError as err:
        return [f"{path}: file does not open as HDF5 ({err})"]
    with root:
        required = [ACTION_KEY, QPOS_KEY]
        for key in required:
            if key not in root:
                bad(key, "a dataset", "nothing")
        if problems:
            return problems
        action, qpos = root[ACTION_KEY], root[QPOS_KEY]
        length = action.shape[0] if action.ndim >= 1 else 0
        if action.ndim != 2 or (action_dim is not None and action.shape[1] != action_dim):
            bad(ACTION_KEY, f"shape {_shape('T', action_dim)}", f"shape {action.shape}")
        if length == 0:
            bad(ACTION_KEY, "at least one step", "0 steps")
        if qpos.ndim != 2 or qpos.shape[0] != length or (state_dim is not None and qpos.shape[1] != state_dim):
            bad(QPOS_KEY, f"shape {_shape(str(length), state_dim)}", f"shape {qpos.shape}")
        if QVEL_KEY in root and root[QVEL_KEY].shape[0] != length:
            bad(QVEL_KEY, f"{length} steps (as {ACTION_KEY})", f"shape {root[QVEL_KEY].shape}")
        for key in (ACTION_KEY, QPOS_KEY, QVEL_KEY):
            if key not in root:
                continue
            values = root[key][()]
            if not np.issubdtype(values.dtype, np.number):
                bad(key, "numeric values", f"dtype {values.dtype}")
            elif not np.all(np.isfinite(values)):
                count = int(np.size(values) - np.isfinite(values).sum())
                bad(key, "finite values", f"{count} NaN/inf value(s)")
        if LANGUAGE_KEY not in root:
            bad(LANGUAGE_KEY, "the instruction, shape (1,)", "nothing")
        elif root[LANGUAGE_KEY].shape != (1,):
            bad(LANGUAGE_KEY, "shape (1,)", f"shape {root[LANGUAGE_KEY].shape}")
        if REASONING_KEY in root and root[REASONING_KEY].shape[:1] != (length,):
            bad(REASONING_KEY, f"shape ({length},)", f"shape {root[REASONING_KEY].shape}")
        # The reference reads the episode-level fallback at index 0: any non-empty array (or a scalar) will do.
        if EPISODE_REASONING_KEY in root:
            shape = root[EPISODE_REASONING_KEY].shape
            if shape != () and (len(shape) != 1 or shape[0] < 1):
                bad(EPISODE_REASONING_KEY, "shape (1,)", f"shape {shape}")

        compressed = is_compressed(root)
        for camera in camera_names:
            key = f"{IMAGES_GROUP}/{camera}"
            if key not in root:
                bad(key, f"camera '{camera}' present", "nothing")
                continue
            images = root[key]
            if images.shape[0] != length:
                bad(key, f"{length} frames (as {ACTION_KEY})", f"{images.shape[0]} frames")
            if images.dtype != np.uint8:
                bad(key, "dtype uint8", f"dtype {images.dtype}")
            if not compressed and (images.ndim != 4 or images.shape[-1] != 3):
                bad(key, "shape (T, H, W, 3)", f"shape {images.shape}")
            if check_images and not problems:
                for t in (0, length - 1) if not compressed else range(length):
                    try:
                        frame = read_frame(root, camera, t)
                    except Exception as err:  # noqa: BLE001 - any decode failure is a data problem
                        bad(key, f"frame {t} readable", f"{type(err).__name__}: {err}")
                        break
                    if frame.ndim != 3 or frame.shape[-1] != 3:
                        bad(key, f"frame {t} of shape (H, W, 3)", f"shape {frame.shape}")
                        break
    return problems


def check_episodes(
    paths: Sequence[str],
    camera_names: Sequence[str],
    state_dim: int | None = None,
    action_dim: int | None = None,
    check_images: bool = True,
) -> list[str]:
    """Problems of all ``paths``; dims default to the first good episode's so files must agree."""
    problems: list[str] = []
    for path in paths:
        found = check_episode(path, camera_names, state_dim, action_dim, check_images)
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
            paths.extend(find_all_hdf5(directory, name_filter=name_filter))
        except FileNotFoundError as err:
            problems.append(str(err))
    return paths, problems


def check_dirs(
    dataset_dirs: Sequence[str],
    camera_names: Sequence[str],
    state_dim: int | None = None,
    action_dim: int | None = None,
    check_images: bool = True,
    name_filter: Callable[[str], bool] | None = None,
) -> list[str]:
    """Problems of every episode below ``dataset_dirs`` (warnings such as missing reasoning are not problems)."""
    paths, problems = _find_paths(dataset_dirs, name_filter)
    return problems + check_episodes(paths, camera_names, state_dim, action_dim, check_images)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dirs", nargs="+", help="directories searched recursively for *.hdf5")
    parser.add_argument("--camera_names", nargs="+", required=True)
    parser.add_argument("--state_dim", type=int, default=None)
    parser.add_argument("--action_dim", type=int, default=None)
    parser.add_argument("--skip_images", action="store_true", help="check image shapes only, decode no frame")
    args = parser.parse_args(argv)
    paths, problems = _find_paths(args.dataset_dirs, None)
    problems += check_episodes(paths, args.camera_names, args.state_dim, args.action_dim, not args.skip_images)
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
