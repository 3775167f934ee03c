"""One episode, whatever it is stored in: an ACT HDF5 file or an episode of a LeRobotDataset root.

Training code names episodes by string references (``EpisodicDataset.dataset_path_list``, the
sampler, the train/val split, ``dataset_stats.json``): an HDF5 episode by its path, a LeRobot
episode by ``<root>#episode=<episode_index>`` (:func:`lerobot_episode_ref`). :func:`find_episodes`
lists either kind for a ``TASK_CONFIGS`` ``dataset_dir``; the format is detected from the directory
(``meta/info.json`` makes a LeRobot root), so a task mixes both kinds by listing both directories.

:func:`open_episode` gives an :class:`Episode` with one reading interface for both:

- frame/action pairing: ``is_sim`` says whether ``action[t]`` belongs to frame ``t``; ACT's real-robot
  HDF5 recordings lag one step (``chunk_start``); LeRobot pairs ``action[t]`` with frame ``t``, as
  simulated HDF5 episodes do;
- cameras: a name is looked up as given, then with (LeRobot) or without (HDF5) the
  ``observation.images.`` prefix, so ``cam_high`` and ``observation.images.cam_high`` name the same
  camera in both formats and one ``camera_names`` list serves a mixed task;
- language: HDF5 ``/language_raw``; LeRobot the frame's task; reasoning: HDF5
  ``/substep_reasonings[t]`` (else ``/reasoning``), LeRobot the per-frame string feature.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import h5py
import numpy as np

from data_utils import hdf5_io
from data_utils.lerobot_io import LeRobotRoot, is_lerobot_root, recorded_sim

LEROBOT_REF_SEPARATOR = "#episode="
LEROBOT_CAMERA_PREFIX = "observation.images."

# LeRobotRoot objects by root (metadata is read once; a forked DataLoader worker inherits them, and each
# LeRobotRoot drops its decoders and caches when it finds itself in a new process).
_ROOTS: dict[str, LeRobotRoot] = {}
# Feature keys per root (absolute path) where a task overrides the defaults (TASK_CONFIGS "lerobot_features").
_FEATURES: dict[str, dict[str, str]] = {}
LEROBOT_FEATURE_ROLES = ("state", "action", "reasoning")


def lerobot_episode_ref(root: str | os.PathLike, episode_index: int) -> str:
    """The reference of episode ``episode_index`` of the LeRobot root ``root``."""
    return f"{os.fspath(root)}{LEROBOT_REF_SEPARATOR}{int(episode_index)}"


def parse_lerobot_ref(ref: str) -> tuple[str, int] | None:
    """``(root, episode_index)`` of a LeRobot episode reference; ``None`` for an HDF5 path."""
    root, sep, index = str(ref).rpartition(LEROBOT_REF_SEPARATOR)
    if not sep or not index.isdigit():
        return None
    return root, int(index)


def configure_lerobot_features(root: str | os.PathLike, features: Mapping[str, str] | None) -> None:
    """Read ``root``'s state/action/reasoning from the given feature keys (``{"state": key, ...}``; None: defaults)."""
    path = os.path.abspath(os.fspath(root))
    features = dict(features or {})
    unknown = sorted(set(features) - set(LEROBOT_FEATURE_ROLES))
    if unknown:
        raise ValueError(f"lerobot_features: unknown role(s) {unknown}; roles are {list(LEROBOT_FEATURE_ROLES)}")
    if _FEATURES.get(path, {}) != features:
        _FEATURES[path] = features
        _ROOTS.pop(path, None)


def lerobot_feature_config() -> dict[str, dict[str, str]]:
    """Every root's feature overrides (a copy), for handing to a spawned worker (:func:`restore_lerobot_features`)."""
    return {root: dict(features) for root, features in _FEATURES.items()}


def restore_lerobot_features(config: Mapping[str, Mapping[str, str]]) -> None:
    for root, features in config.items():
        configure_lerobot_features(root, features)


def lerobot_root(root: str | os.PathLike) -> LeRobotRoot:
    """The (cached) :class:`LeRobotRoot` of ``root``, reading the features it is configured with."""
    path = os.path.abspath(os.fspath(root))
    cached = _ROOTS.get(path)
    if cached is None:
        features = _FEATURES.get(path, {})
        kwargs = {f"{role}_key": features[role] for role in LEROBOT_FEATURE_ROLES if role in features}
        cached = _ROOTS[path] = LeRobotRoot(root, **kwargs)
    return cached


def lerobot_camera_key(root: LeRobotRoot, camera: str) -> str:
    """The feature of ``root`` that ``camera`` names: itself, else ``observation.images.<camera>``."""
    if camera not in root.features and LEROBOT_CAMERA_PREFIX + camera in root.features:
        return LEROBOT_CAMERA_PREFIX + camera
    return camera


def find_episodes(
    dataset_dir: str | os.PathLike,
    skip_mirrored_data: bool = False,
    name_filter: Callable[[str], bool] | None = None,
) -> list[str]:
    """Episode references under ``dataset_dir``: its HDF5 files, or the episodes of the LeRobot root it is.

    ``name_filter`` sees a path or a reference (``<root>#episode=<i>``); ``skip_mirrored_data`` applies
    to HDF5 file names only.
    """
    if not is_lerobot_root(dataset_dir):
        return hdf5_io.find_all_hdf5(dataset_dir, skip_mirrored_data, name_filter)
    root = lerobot_root(dataset_dir)
    refs = [lerobot_episode_ref(dataset_dir, ep.index) for ep in root.episodes]
    if name_filter is not None:
        refs = [ref for ref in refs if name_filter(ref)]
    if not refs:
        raise FileNotFoundError(f"no episodes in the LeRobot dataset {dataset_dir} (after name_filter)")
    return refs


class Episode:
    """Reading interface of one episode (see the module docstring). Use through :func:`open_episode`."""

    ref: str
    length: int
    is_sim: bool

    def action(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """``(n, action_dim)`` actions ``start:end`` as stored (float32 or float64)."""
        raise NotImplementedError

    def qpos(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """``(n, state_dim)`` states ``start:end`` as stored."""
        raise NotImplementedError

    def frame(self, camera: str, t: int) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB image of ``camera`` at frame ``t``."""
        raise NotImplementedError

    def language(self, t: int = 0) -> str:
        raise NotImplementedError

    def reasoning(self, t: int) -> str | None:
        """The reasoning of frame ``t``; ``None``: the episode has no reasoning annotation."""
        raise NotImplementedError

    def has_reasoning(self) -> bool:
        raise NotImplementedError


class _Hdf5Episode(Episode):
    def __init__(self, path: str, root: h5py.File) -> None:
        self.ref, self._root = path, root
        self.length = int(root[hdf5_io.ACTION_KEY].shape[0])
        self.is_sim = bool(root.attrs.get("sim", False))

    def action(self, start: int = 0, end: int | None = None) -> np.ndarray:
        return self._root[hdf5_io.ACTION_KEY][start:end]

    def qpos(self, start: int = 0, end: int | None = None) -> np.ndarray:
        return self._root[hdf5_io.QPOS_KEY][start:end]

    def camera_key(self, camera: str) -> str:
        images = self._root.get(hdf5_io.IMAGES_GROUP)
        if images is not None and camera not in images and camera.startswith(LEROBOT_CAMERA_PREFIX):
            short = camera[len(LEROBOT_CAMERA_PREFIX) :]
            if short in images:
                return short
        return camera

    def frame(self, camera: str, t: int) -> np.ndarray:
        return hdf5_io.read_frame(self._root, self.camera_key(camera), t)

    def language(self, t: int = 0) -> str:
        return hdf5_io.read_language(self._root)

    def reasoning(self, t: int) -> str | None:
        return hdf5_io.read_reasoning(self._root, t)

    def has_reasoning(self) -> bool:
        return hdf5_io.has_reasoning(self._root)


class _LeRobotEpisode(Episode):
    def __init__(self, ref: str, root: LeRobotRoot, index: int) -> None:
        self.ref, self._root, self._index = ref, root, index
        self.length = root.episode(index).length
        # LeRobot pairs action[t] with frame t; a root converted from real-robot ACT HDF5 keeps its lag.
        self.is_sim = recorded_sim(root.info)
        self._arrays = root.read_episode_arrays(index)

    def action(self, start: int = 0, end: int | None = None) -> np.ndarray:
        return self._arrays.action[start:end]

    def qpos(self, start: int = 0, end: int | None = None) -> np.ndarray:
        return self._arrays.state[start:end]

    def camera_key(self, camera: str) -> str:
        return lerobot_camera_key(self._root, camera)

    def frame(self, camera: str, t: int) -> np.ndarray:
        return self._root.read_frame(self.camera_key(camera), self._index, t)

    def language(self, t: int = 0) -> str:
        return self._arrays.task[t] if self._arrays.task else ""

    def reasoning(self, t: int) -> str | None:
        return None if self._arrays.reasoning is None else self._arrays.reasoning[t]

    def has_reasoning(self) -> bool:
        return self._arrays.reasoning is not None


@contextmanager
def open_episode(ref: str | os.PathLike) -> Iterator[Episode]:
    """The :class:`Episode` of ``ref`` (an HDF5 path or a LeRobot reference), open for the ``with`` block."""
    ref = os.fspath(ref)
    parsed = parse_lerobot_ref(ref)
    if parsed is not None:
        root, index = parsed
        yield _LeRobotEpisode(ref, lerobot_root(root), index)
        return
    with h5py.File(ref, "r") as file:
        yield _Hdf5Episode(ref, file)


def episode_length(ref: str | os.PathLike) -> int:
    parsed = parse_lerobot_ref(os.fspath(ref))
    if parsed is not None:
        return lerobot_root(parsed[0]).episode(parsed[1]).length
    return hdf5_io.episode_length(ref)


def split_by_format(refs: Sequence[str]) -> tuple[list[str], dict[str, list[int]]]:
    """``(hdf5_paths, {lerobot_root: [episode_index, ...]})`` of ``refs`` (order kept within each)."""
    hdf5: list[str] = []
    lerobot: dict[str, list[int]] = {}
    for ref in refs:
        parsed = parse_lerobot_ref(ref)
        if parsed is None:
            hdf5.append(ref)
        else:
            lerobot.setdefault(parsed[0], []).append(parsed[1])
    return hdf5, lerobot


__all__ = [
    "Episode",
    "LEROBOT_CAMERA_PREFIX",
    "episode_length",
    "configure_lerobot_features",
    "find_episodes",
    "lerobot_feature_config",
    "lerobot_camera_key",
    "lerobot_episode_ref",
    "lerobot_root",
    "open_episode",
    "parse_lerobot_ref",
    "restore_lerobot_features",
    "split_by_format",
]
