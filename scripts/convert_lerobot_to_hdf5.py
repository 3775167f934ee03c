"""Convert a LeRobotDataset root (v3.0, or v2.1) to ACT-layout HDF5 episodes, one file per episode.

    python scripts/convert_lerobot_to_hdf5.py SRC_ROOT OUT_DIR [--episodes 0 3 7] [--compress]
        [--cameras observation.images.top ...] [--state_key K] [--action_key K] [--reasoning_key K]

Episode ``i`` becomes ``OUT_DIR/episode_{i}.hdf5`` (``data_utils.hdf5_io.write_episode``):

    observation.images.<cam> (video or image)  ->  /observations/images/<cam>   uint8 (H, W, 3), RGB as LeRobot
                                                   stores it; JPEG buffers with --compress (ACT's compress)
    observation.state                          ->  /observations/qpos
    observation.velocity (if present)          ->  /observations/qvel           (zeros otherwise: ACT needs the key,
                                                                                  nothing in DexVLA trains on it)
    action                                     ->  /action
    the episode's task                         ->  /language_raw
    observation.reasoning (if present)         ->  /substep_reasonings          (absent when the feature is absent
                                                                                  or all of the episode's strings are empty)
    meta/info.json "dexvla" "sim"              ->  attrs['sim']                 (true when absent: LeRobot pairs
                                                                                  frame t with action[t], which is ACT's sim rule)

Resumable and atomic per episode: each file is written under a hidden temporary name in OUT_DIR and
renamed when complete (an error removes it), and episodes whose file already exists are skipped, so
an interrupted run is finished by running the same command again. Memory holds one episode.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_utils.hdf5_io import write_episode  # noqa: E402
from data_utils.lerobot_io import ACTION_KEY as LEROBOT_ACTION_KEY  # noqa: E402
from data_utils.lerobot_io import STATE_KEY, LeRobotEpisode, LeRobotFormatError, LeRobotRoot  # noqa: E402
from data_utils.lerobot_write import CAMERA_PREFIX, VELOCITY_KEY, recorded_sim  # noqa: E402


def camera_name(key: str) -> str:
    """HDF5 camera name of a LeRobot camera feature: ``observation.images.top`` -> ``top``."""
    return key[len(CAMERA_PREFIX) :] if key.startswith(CAMERA_PREFIX) else key


def episode_file(out_dir: Path, index: int) -> Path:
    return out_dir / f"episode_{index}.hdf5"


def read_vector_column(root: LeRobotRoot, ep: LeRobotEpisode, key: str) -> np.ndarray:
    """``(T, D)`` float32 values of the vector feature ``key`` for episode ``ep``, ordered by ``frame_index``."""
    table = pq.read_table(ep.data_path, columns=[key, "frame_index"], filters=[("episode_index", "=", ep.index)])
    order = np.argsort(table.column("frame_index").to_numpy(), kind="stable")
    if table.num_rows != ep.length:
        raise LeRobotFormatError(f"{ep.data_path}: episode {ep.index} has {table.num_rows} rows of '{key}', expected {ep.length}")
    column = table.column(key).combine_chunks()
    width = int(root.features[key]["shape"][0])
    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) or pa.types.is_large_list(column.type)):
        values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, 1)  # a (1,) feature
    else:
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths.min() != width or lengths.max() != width):
            raise LeRobotFormatError(f"{ep.data_path}: feature '{key}' of episode {ep.index} has rows not of length {width}")
        values = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, width)
    return values[order]


def convert_episode(
    root: LeRobotRoot, index: int, path: Path, cameras: Sequence[str], compress: bool, sim: bool, progress: tqdm | None = None
) -> None:
    """Write episode ``index`` of ``root`` to ``path`` through a temporary file (removed on error)."""
    ep = root.episode(index)
    arrays = root.read_episode_arrays(index)
    if VELOCITY_KEY in root.features:
        qvel = read_vector_column(root, ep, VELOCITY_KEY)
    else:
        qvel = np.zeros_like(arrays.state)
    images = {}
    for camera in cameras:
        height, width, _ = root.image_shape(camera)
        frames = np.empty((ep.length, height, width, 3), dtype=np.uint8)
        for t in range(ep.length):
            frames[t] = root.read_frame(camera, index, t)
            if progress is not None:
                progress.update(1)
        images[camera_name(camera)] = frames
    reasoning = arrays.reasoning
    if reasoning is not None and not any(reasoning):
        reasoning = None
    tasks = set(arrays.task)
    if len(tasks) > 1:
        print(f"warning: episode {index} has {len(tasks)} tasks; ACT keeps one, the first frame's: {arrays.task[0]!r}", file=sys.stderr)
    instruction = arrays.task[0] if arrays.task else ep.task
    # write_episode is itself atomic (its own temp file); the hidden name keeps a half-written file from
    # ever carrying the final name, and every temp file of this episode starts with it.
    partial = path.with_name(f".{path.name}.partial")
    try:
        write_episode(
            partial,
            actions=arrays.action,
            qpos=arrays.state,
            qvel=qvel,
            images=images,
            instruction=instruction,
            reasoning=reasoning,
            compress=compress,
            sim=sim,
        )
        partial.replace(path)
    except BaseException:
        for leftover in path.parent.glob(f".{path.name}.partial*"):
            leftover.unlink(missing_ok=True)
        raise


def convert_lerobot_to_hdf5(
    src_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    episodes: Sequence[int] | None = None,
    compress: bool = False,
    cameras: Sequence[str] | None = None,
    state_key: str = STATE_KEY,
    action_key: str = LEROBOT_ACTION_KEY,
    reasoning_key: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert ``episodes`` (default: all) of the LeRobot root ``src_root`` into ``out_dir``.

    Returns ``converted`` and ``skipped`` (episode indices), ``frames`` converted, ``seconds``, ``frames_per_second``.
    """
    root = LeRobotRoot(src_root, state_key=state_key, action_key=action_key, reasoning_key=reasoning_key)
    keys = list(root.camera_keys)
    if cameras:
        by_name = {camera_name(k): k for k in keys}
        unknown = [c for c in cameras if c not in keys and c not in by_name]
        if unknown:
            raise LeRobotFormatError(f"{src_root}: camera(s) {unknown} not among its camera features {keys}")
        keys = [c if c in root.features else by_name[c] for c in cameras]
    names = [camera_name(k) for k in keys]
    if len(set(names)) != len(names):
        raise LeRobotFormatError(f"{src_root}: camera features {keys} map to clashing HDF5 names {names}")
    wanted = [ep.index for ep in root.episodes] if episodes is None else [root.episode(i).index for i in episodes]
    sim = recorded_sim(root.info)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in wanted if not episode_file(out_dir, i).exists()]
    skipped = [i for i in wanted if i not in todo]
    frames = sum(root.episode(i).length for i in todo)
    start = time.perf_counter()
    with tqdm(total=frames * len(keys), unit="img", desc="lerobot -> hdf5", disable=not progress) as bar:
        for index in todo:
            bar.set_postfix_str(f"episode {index}")
            convert_episode(root, index, episode_file(out_dir, index), keys, compress, sim, bar)
    root.close()
    seconds = time.perf_counter() - start
    return {
        "converted": todo,
        "skipped": skipped,
        "frames": frames,
        "seconds": seconds,
        "frames_per_second": frames / seconds if seconds > 0 else float("inf"),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src_root", help="LeRobotDataset root (the folder holding meta/info.json)")
    parser.add_argument("out_dir", help="folder for episode_<i>.hdf5 files (existing ones are kept and skipped)")
    parser.add_argument("--episodes", type=int, nargs="+", default=None, help="episode indices (default: all)")
    parser.add_argument("--compress", action="store_true", help="store frames as JPEG buffers (ACT's compress)")
    parser.add_argument("--cameras", nargs="+", default=None, help="camera features or their short names (default: all)")
    parser.add_argument("--state_key", default=STATE_KEY)
    parser.add_argument("--action_key", default=LEROBOT_ACTION_KEY)
    parser.add_argument("--reasoning_key", default=None, help="per-frame string feature (default: observation.reasoning if present)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    summary = convert_lerobot_to_hdf5(
        args.src_root, args.out_dir, args.episodes, args.compress, args.cameras,
        args.state_key, args.action_key, args.reasoning_key, progress=not args.quiet,
    )
    print(
        f"wrote {len(summary['converted'])} episodes to {args.out_dir} ({summary['frames']} frames, "
        f"{summary['frames_per_second']:.0f} frames/s); skipped {len(summary['skipped'])} already converted"
    )


if __name__ == "__main__":
    main()
