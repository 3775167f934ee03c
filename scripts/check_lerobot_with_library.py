"""Open a LeRobotDataset root with the ``lerobot`` library's own reader and check it against ours.

Runs in the throwaway lerobot venv, with torchcodec (the library's video decoder) — not in ``.venv``,
and not in CI (the venv is built on demand)::

    WITH_TORCHCODEC=1 scripts/setup_lerobot_venv.sh              # once: .lerobot-venv
    source .lerobot-venv/bin/ffmpeg-env.sh                        # torchcodec finds PyAV's FFmpeg
    .lerobot-venv/bin/python scripts/check_lerobot_with_library.py ROOT [--frames 3]

``LeRobotDataset(repo_id, root=ROOT)`` (offline) loads the metadata, the data parquet files and the
statistics; then, for every episode, ``--frames`` frames (first, last and evenly between) are read
through ``dataset[i]`` (which decodes the video frames with torchcodec) and compared with what
``data_utils.lerobot_io.LeRobotRoot`` gives for the same frame (its import needs only pyarrow, numpy,
PyAV and h5py, which the venv reaches): episode and frame index, state and action (exactly equal),
the ``--chunk``-step action chunk the library builds from ``delta_timestamps`` (equal, padding flags right),
task and reasoning strings (equal), camera images (PSNR between the two decoders at least
``--min_psnr``: both decode the same stream, so they differ at most by rounding in the colour
conversion). Prints one line per episode and a summary; exits 1 on any mismatch or error.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def psnr(a, b) -> float:
    import numpy as np  # noqa: PLC0415

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def frame_positions(length: int, count: int) -> list[int]:
    """``count`` frame indices from first to last of an episode of ``length`` frames."""
    if length <= count:
        return list(range(length))
    return sorted({round(i * (length - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]


def check(root: Path, frames_per_episode: int, min_psnr: float, chunk: int) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np  # noqa: PLC0415
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: PLC0415

    from data_utils.lerobot_io import ACTION_KEY, STATE_KEY, LeRobotRoot  # noqa: PLC0415

    problems: list[str] = []
    start = time.perf_counter()
    dataset = LeRobotDataset(f"local/{root.name}", root=root)
    # How the library's policies read action chunks: delta_timestamps, padded past the episode's end.
    chunked = LeRobotDataset(
        f"local/{root.name}", root=root, delta_timestamps={ACTION_KEY: [k / dataset.meta.fps for k in range(chunk)]}
    )
    ours = LeRobotRoot(root)
    load_s = time.perf_counter() - start
    meta = dataset.meta
    print(
        f"library: {meta.total_episodes} episodes, {meta.total_frames} frames, fps {meta.fps}, "
        f"cameras {meta.camera_keys}, video backend {dataset.video_backend}, codebase {meta.info['codebase_version']}"
    )
    if len(dataset) != ours.total_frames or meta.total_episodes != len(ours.episodes):
        problems.append(
            f"library sees {meta.total_episodes} episodes / {len(dataset)} frames, ours {len(ours.episodes)} / {ours.total_frames}"
        )
    if meta.stats is None or not {STATE_KEY, ACTION_KEY} <= set(meta.stats):
        problems.append(f"meta/stats.json as the library loads it lacks {STATE_KEY} or {ACTION_KEY}")
    reasoning_key = ours.reasoning_key
    worst_psnr = {camera: math.inf for camera in meta.camera_keys}
    checked = 0
    read_s = 0.0
    for row in range(meta.total_episodes):
        ep = meta.episodes[row]
        index = int(ep["episode_index"])
        first = int(ep["dataset_from_index"])
        arrays = ours.read_episode_arrays(index)
        bad_before = len(problems)
        for t in frame_positions(int(ep["length"]), frames_per_episode):
            where = f"episode {index} frame {t}"
            tick = time.perf_counter()
            try:
                item = dataset[first + t]
            except Exception as err:  # noqa: BLE001 - report whatever the library raises, then go on
                problems.append(f"{where}: the library cannot read it ({type(err).__name__}: {err})")
                continue
            read_s += time.perf_counter() - tick
            checked += 1
            if int(item["episode_index"]) != index or int(item["frame_index"]) != t:
                problems.append(f"{where}: the library's row is episode {int(item['episode_index'])} frame {int(item['frame_index'])}")
                continue
            for key, expected in ((STATE_KEY, arrays.state[t]), (ACTION_KEY, arrays.action[t])):
                got = item[key].numpy()
                if got.shape != expected.shape or not np.array_equal(got, expected):
                    problems.append(f"{where}: '{key}' differs (max |diff| {np.abs(got - expected).max():.3g})")
            actions = chunked[first + t]
            valid = min(chunk, len(arrays.action) - t)
            pad = actions[f"{ACTION_KEY}_is_pad"].numpy()
            if not np.array_equal(actions[ACTION_KEY].numpy()[:valid], arrays.action[t : t + valid]) or pad.sum() != chunk - valid:
                problems.append(f"{where}: the library's {chunk}-step action chunk differs from action[{t}:{t + chunk}]")
            if item["task"] != arrays.task[t]:
                problems.append(f"{where}: task {item['task']!r} != ours {arrays.task[t]!r}")
            if reasoning_key is not None and item.get(reasoning_key) != arrays.reasoning[t]:
                problems.append(f"{where}: '{reasoning_key}' {item.get(reasoning_key)!r} != ours {arrays.reasoning[t]!r}")
            for camera in meta.camera_keys:
                # The library gives (C, H, W) float in [0, 1]; ours (H, W, 3) uint8.
                theirs = np.round(item[camera].numpy().transpose(1, 2, 0) * 255.0).astype(np.uint8)
                mine = ours.read_frame(camera, index, t)
                if theirs.shape != mine.shape:
                    problems.append(f"{where}: camera '{camera}' is {theirs.shape} from the library, {mine.shape} from ours")
                    continue
                value = psnr(theirs, mine)
                worst_psnr[camera] = min(worst_psnr[camera], value)
                if value < min_psnr:
                    problems.append(f"{where}: camera '{camera}' decodes differently (PSNR {value:.1f} dB < {min_psnr} dB)")
        status = "ok" if len(problems) == bad_before else f"{len(problems) - bad_before} problem(s)"
        print(f"episode {index}: {int(ep['length'])} frames, task {arrays.task[0]!r}: {status}")
    ours.close()
    for line in problems:
        print(f"MISMATCH {line}")
    psnr_text = ", ".join(f"{camera} {value:.1f} dB" for camera, value in worst_psnr.items())
    print(
        f"summary: {checked} frames of {meta.total_episodes} episodes read by the library and compared; "
        f"lowest PSNR library vs ours: {psnr_text}; load {load_s:.1f} s, {read_s / max(checked, 1) * 1000:.0f} ms per item; "
        f"{'OK' if not problems else f'{len(problems)} MISMATCH(ES)'}"
    )
    return 0 if not problems else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="LeRobotDataset v3.0 root (holds meta/info.json)")
    parser.add_argument("--frames", type=int, default=3, help="frames checked per episode (first, last, between)")
    parser.add_argument("--chunk", type=int, default=5, help="action chunk read through delta_timestamps")
    parser.add_argument("--min_psnr", type=float, default=40.0, help="dB; the library's and our decoded frames")
    args = parser.parse_args()
    # The library's `datasets` loader writes an Arrow cache; keep it out of the user's cache.
    with tempfile.TemporaryDirectory(prefix="lerobot_check_cache_") as cache:
        os.environ.setdefault("HF_DATASETS_CACHE", cache)
        code = check(args.root.resolve(), args.frames, args.min_psnr, args.chunk)
    sys.exit(code)


if __name__ == "__main__":
    main()
