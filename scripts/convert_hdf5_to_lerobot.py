"""Convert a folder of ACT-layout HDF5 episodes to a LeRobotDataset v3.0 root.

    python scripts/convert_hdf5_to_lerobot.py SRC_DIR OUT_ROOT [--fps 50] [--repo_id NAME]
        [--vcodec libsvtav1|h264|hevc] [--crf 30] [--cameras cam_high ...] [--robot_type aloha] [--overwrite]

What goes where (one LeRobot episode per ``*.hdf5`` file, in natural order of their paths, so
``episode_2`` comes before ``episode_10``):

    /observations/images/<cam>    ->  observation.images.<cam>   video, one mp4 per camera (AV1 by default)
    /observations/qpos            ->  observation.state          float32
    /observations/qvel            ->  observation.velocity       float32
    /action                       ->  action                     float32, NOT shifted (see below)
    /language_raw                 ->  the episode's task         meta/tasks.parquet + task_index
    /substep_reasonings           ->  observation.reasoning      per-frame string (the episode-level
                                                                 /reasoning is repeated per frame)
    attrs['sim']                  ->  meta/info.json "dexvla": {"source": "act_hdf5", "sim": ...}

Frame/action pairing: real-robot ACT episodes (``attrs['sim']`` false) lag one step, and training
pairs frame ``t`` with ``action[t-1:]`` (``data_utils.dataset.chunk_start``); LeRobot's convention
pairs it with ``action[t:]``. Shifting the actions would lose the last one (the round trip could
not be exact) and change the first chunk, so actions are copied unchanged and the source's ``sim``
is recorded in ``meta/info.json``; readers apply the HDF5 rule from it
(``data_utils.lerobot_write.recorded_sim``), so training on the converted root pairs exactly as on
the HDF5 files. All episodes of one conversion must agree on ``sim``, cameras and dimensions.
Consumers that ignore the key (the ``lerobot`` library) see the recorded, unshifted pairing.

Atomic: everything is written into a sibling folder ``OUT_ROOT.tmp-XXXX`` that is renamed to
``OUT_ROOT`` only when complete; an error removes it, so OUT_ROOT either holds a whole dataset or
does not exist. (A run killed outright leaves ``OUT_ROOT.tmp-*`` behind; delete it.) Not resumable:
a v3.0 mp4 holds many episodes, so a rerun starts over. Memory holds one frame per camera and one
episode's vectors, whatever the dataset's size.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_utils.hdf5_io import (  # noqa: E402
    ACTION_KEY,
    IMAGES_GROUP,
    QPOS_KEY,
    QVEL_KEY,
    find_all_hdf5,
    read_frame,
    read_language,
    read_reasoning,
)
from data_utils.lerobot_io import ACTION_KEY as LEROBOT_ACTION_KEY  # noqa: E402
from data_utils.lerobot_io import DEFAULT_REASONING_KEY, STATE_KEY  # noqa: E402
from data_utils.lerobot_write import (  # noqa: E402
    CAMERA_PREFIX,
    DEFAULT_DATA_FILE_SIZE_IN_MB,
    DEFAULT_VIDEO_FILE_SIZE_IN_MB,
    DEXVLA_INFO_KEY,
    VELOCITY_KEY,
    VIDEO_CODECS,
    LeRobotWriter,
    string_feature,
    vector_feature,
    video_feature,
)
from data_utils.video_encode import DEFAULT_CODEC, DEFAULT_CRF  # noqa: E402


def natural_key(path: str) -> list[Any]:
    """Sort key that orders ``episode_2`` before ``episode_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _layout(path: str, cameras: Sequence[str] | None) -> dict[str, Any]:
    """What one episode holds: sim, cameras and their shapes, dims, reasoning, length."""
    with h5py.File(path, "r") as root:
        for key in (ACTION_KEY, QPOS_KEY):
            if key not in root:
                raise KeyError(f"{path}: key '{key}' missing (an ACT episode has /action and /observations/qpos)")
        if root[ACTION_KEY].shape[0] == 0:
            raise ValueError(f"{path}: key '{ACTION_KEY}' has no steps; an episode needs at least one")
        present = list(root[IMAGES_GROUP]) if IMAGES_GROUP in root else []
        names = list(cameras) if cameras else present
        missing = [c for c in names if c not in present]
        if missing or not names:
            raise KeyError(f"{path}: camera(s) {missing or names} missing under '{IMAGES_GROUP}' (present: {present})")
        shapes = {c: tuple(int(s) for s in read_frame(root, c, 0).shape) for c in names}
        return {
            "sim": bool(root.attrs.get("sim", False)),
            "cameras": names,
            "shapes": shapes,
            "state_dim": int(root[QPOS_KEY].shape[1]),
            "action_dim": int(root[ACTION_KEY].shape[1]),
            "has_qvel": QVEL_KEY in root,
            "reasoning": read_reasoning(root, 0) is not None if len(root[ACTION_KEY]) else False,
            "length": int(root[ACTION_KEY].shape[0]),
        }


def _check_same(first: dict[str, Any], other: dict[str, Any], path: str, first_path: str) -> None:
    for key in ("sim", "cameras", "shapes", "state_dim", "action_dim", "has_qvel", "reasoning"):
        if other[key] != first[key]:
            raise ValueError(
                f"{path}: '{key}' is {other[key]!r} but {first_path} has {first[key]!r}; one LeRobot root holds "
                "episodes of one layout (convert differing folders separately)"
            )


def _frames(root: h5py.File, camera: str, length: int, progress: tqdm) -> Iterator[np.ndarray]:
    for t in range(length):
        yield read_frame(root, camera, t)
        progress.update(1)


def convert_hdf5_to_lerobot(
    src_dir: str | os.PathLike,
    out_root: str | os.PathLike,
    fps: int = 50,
    repo_id: str | None = None,
    vcodec: str = DEFAULT_CODEC,
    crf: int | None = DEFAULT_CRF,
    cameras: Sequence[str] | None = None,
    robot_type: str | None = None,
    encoder_threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    data_files_size_in_mb: float = DEFAULT_DATA_FILE_SIZE_IN_MB,
    video_files_size_in_mb: float = DEFAULT_VIDEO_FILE_SIZE_IN_MB,
) -> dict[str, Any]:
    """Convert every HDF5 episode under ``src_dir`` into the LeRobot root ``out_root`` (atomically).

    Returns a summary: ``episodes``, ``frames``, ``seconds``, ``frames_per_second``, ``sim``.
    """
    out_root = Path(out_root)
    if out_root.exists() and not overwrite:
        raise FileExistsError(f"{out_root}: already exists (pass --overwrite to replace it)")
    paths = sorted(find_all_hdf5(src_dir), key=natural_key)
    layouts = [_layout(p, cameras) for p in paths]
    first = layouts[0]
    for path, layout in zip(paths, layouts, strict=True):
        _check_same(first, layout, path, paths[0])
    total_frames = sum(layout["length"] for layout in layouts)

    # The order the library's recorders use: vectors, strings, then cameras.
    features: dict[str, dict[str, Any]] = {STATE_KEY: vector_feature(first["state_dim"])}
    if first["has_qvel"]:
        features[VELOCITY_KEY] = vector_feature(first["state_dim"])
    features[LEROBOT_ACTION_KEY] = vector_feature(first["action_dim"])
    has_reasoning = first["reasoning"]
    if has_reasoning:
        features[DEFAULT_REASONING_KEY] = string_feature()
    for camera in first["cameras"]:
        height, width, _ = first["shapes"][camera]
        features[CAMERA_PREFIX + camera] = video_feature(height, width)

    out_root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{out_root.name}.tmp-", dir=out_root.parent))
    extra = {DEXVLA_INFO_KEY: {"source": "act_hdf5", "sim": first["sim"]}}
    if repo_id:
        extra[DEXVLA_INFO_KEY]["repo_id"] = repo_id
    writer = LeRobotWriter(
        staging, fps, features, robot_type=robot_type, vcodec=vcodec, crf=crf, encoder_threads=encoder_threads,
        extra_info=extra, data_files_size_in_mb=data_files_size_in_mb, video_files_size_in_mb=video_files_size_in_mb,
    )
    start = time.perf_counter()
    # Counts images (frames x cameras): cameras are encoded one after the other within an episode.
    bar = tqdm(total=total_frames * len(first["cameras"]), unit="img", desc="hdf5 -> lerobot", disable=not progress)
    try:
        for path, layout in zip(paths, layouts, strict=True):
            with h5py.File(path, "r") as root:
                length = layout["length"]
                vectors = {STATE_KEY: root[QPOS_KEY][()], LEROBOT_ACTION_KEY: root[ACTION_KEY][()]}
                if first["has_qvel"]:
                    vectors[VELOCITY_KEY] = root[QVEL_KEY][()]
                strings = {}
                if has_reasoning:
                    strings[DEFAULT_REASONING_KEY] = [read_reasoning(root, t) for t in range(length)]
                frames = {CAMERA_PREFIX + cam: _frames(root, cam, length, bar) for cam in first["cameras"]}
                bar.set_postfix_str(Path(path).name)
                writer.add_episode(read_language(root), vectors, strings, frames, source=path)
        writer.finalize()
    except BaseException:
        writer.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        bar.close()
    if out_root.exists():  # overwrite: only now, with the new root complete
        trash = Path(tempfile.mkdtemp(prefix=f"{out_root.name}.old-", dir=out_root.parent))
        out_root.rename(trash / "root")
        staging.rename(out_root)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(out_root)
    seconds = time.perf_counter() - start
    return {
        "episodes": len(paths),
        "frames": total_frames,
        "seconds": seconds,
        "frames_per_second": total_frames / seconds if seconds > 0 else float("inf"),
        "sim": first["sim"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src_dir", help="folder of ACT-layout *.hdf5 episodes (searched recursively)")
    parser.add_argument("out_root", help="LeRobot root to create")
    parser.add_argument("--fps", type=int, default=50, help="recording rate (ALOHA: 50)")
    parser.add_argument("--repo_id", default=None, help="dataset name, recorded in meta/info.json['dexvla']")
    parser.add_argument("--vcodec", default=DEFAULT_CODEC, choices=VIDEO_CODECS, help="libsvtav1 (AV1, the library's default), h264 or hevc")
    parser.add_argument("--crf", type=int, default=DEFAULT_CRF, help="constant quality (lower: better, larger)")
    parser.add_argument("--cameras", nargs="+", default=None, help="cameras to convert (default: all in the first episode)")
    parser.add_argument("--robot_type", default=None)
    parser.add_argument("--encoder_threads", type=int, default=None, help="threads per video encoder")
    parser.add_argument("--data_files_size_in_mb", type=float, default=DEFAULT_DATA_FILE_SIZE_IN_MB, help="start a new data file past this size")
    parser.add_argument("--video_files_size_in_mb", type=float, default=DEFAULT_VIDEO_FILE_SIZE_IN_MB, help="start a new mp4 past this size")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_ROOT (only once the new one is complete)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration per file otherwise
    summary = convert_hdf5_to_lerobot(
        args.src_dir, args.out_root, fps=args.fps, repo_id=args.repo_id, vcodec=args.vcodec, crf=args.crf,
        cameras=args.cameras, robot_type=args.robot_type, encoder_threads=args.encoder_threads,
        overwrite=args.overwrite, progress=not args.quiet,
        data_files_size_in_mb=args.data_files_size_in_mb, video_files_size_in_mb=args.video_files_size_in_mb,
    )
    print(
        f"wrote {args.out_root}: {summary['episodes']} episodes, {summary['frames']} frames in {summary['seconds']:.1f} s "
        f"({summary['frames_per_second']:.0f} frames/s), sim={summary['sim']}"
    )


if __name__ == "__main__":
    main()
