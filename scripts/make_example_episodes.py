"""Write ACT-layout HDF5 example episodes with a learnable signal.

    python scripts/make_example_episodes.py OUT_DIR [--num_episodes 6 --episode_len 50 --compress]

The 14 joints move in 7 pairs, each pair turning on a circle: ``action[t] = R(omega) qpos[t]`` and
``qpos[t+1] = action[t]``, where the angular speed ``omega`` is set by where a red square sits in
``cam_high`` (different in every episode). So the action chunk at ``t`` is a function of what the
image shows and of ``qpos[t]``: a model that reads its inputs can fit it, one that ignores them
cannot; and as each pair sweeps most of its circle, no single chunk fits all steps of an episode.
The wrist cameras show their arm's gripper joint as a bar, so they change over time too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aloha_scripts.constants import ALOHA_CAMERAS  # noqa: E402
from data_utils.hdf5_io import write_episode  # noqa: E402

STATE_DIM = 14
LANGUAGE = "move both arms to the red square"
# Angular speed (rad/step) for a square at x=0 and x=1; each joint pair turns a little faster than the last.
OMEGA_RANGE = (0.05, 0.13)
PAIR_SPEEDUP = 0.05


def angular_speeds(position: np.ndarray, state_dim: int = STATE_DIM) -> np.ndarray:
    """Angular speed ``(state_dim // 2,)`` of each joint pair for a square at ``position`` (x, y in [0, 1])."""
    base = OMEGA_RANGE[0] + (OMEGA_RANGE[1] - OMEGA_RANGE[0]) * position[0]
    direction = 1.0 if position[1] < 0.5 else -1.0
    return direction * base * (1.0 + PAIR_SPEEDUP * np.arange(state_dim // 2))


def rotate_pairs(qpos: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """Turn each joint pair ``(2i, 2i+1)`` of ``qpos (state_dim,)`` by ``omega[i]``."""
    x, y = qpos[0::2], qpos[1::2]
    out = np.empty_like(qpos)
    out[0::2] = np.cos(omega) * x - np.sin(omega) * y
    out[1::2] = np.sin(omega) * x + np.cos(omega) * y
    return out


def reasoning_for_step(t: int, episode_len: int) -> str:
    if t < episode_len // 3:
        return "reach toward the red square"
    if t < 2 * episode_len // 3:
        return "approach the red square"
    return "hold both arms at the square"


def render_frames(position: np.ndarray, qpos: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    """One frame per camera ``(H, W, 3)`` uint8."""
    high = np.full((height, width, 3), 30, dtype=np.uint8)
    size = max(2, min(height, width) // 6)
    cy, cx = int(position[1] * (height - size)), int(position[0] * (width - size))
    high[cy : cy + size, cx : cx + size] = (230, 40, 40)
    frames = {"cam_high": high}
    for camera, gripper in (("cam_left_wrist", qpos[6]), ("cam_right_wrist", qpos[-1])):
        wrist = np.full((height, width, 3), 60, dtype=np.uint8)
        bar = int(np.clip((gripper + 1.0) / 2.0, 0.0, 1.0) * (height - 1)) + 1
        wrist[height - bar :, :, 1] = 200
        frames[camera] = wrist
    return frames


def make_episode(
    path: Path,
    rng: np.random.Generator,
    episode_len: int,
    height: int,
    width: int,
    camera_names: Sequence[str],
    compress: bool,
    sim: bool = True,
    state_dim: int = STATE_DIM,
) -> None:
    position = rng.uniform(0.15, 0.85, size=2)
    pairs = (state_dim + 1) // 2  # an odd width keeps the first coordinate of the last pair
    omega = angular_speeds(position, 2 * pairs)
    radius = rng.uniform(0.5, 0.9, size=pairs)
    phase = rng.uniform(0.0, 2 * np.pi, size=pairs)
    qpos = np.zeros((episode_len + 1, 2 * pairs))
    qpos[0, 0::2], qpos[0, 1::2] = radius * np.cos(phase), radius * np.sin(phase)
    for t in range(episode_len):
        qpos[t + 1] = rotate_pairs(qpos[t], omega)
    qpos = qpos[:, :state_dim]
    action = qpos[1:].copy()
    qpos = qpos[:-1]
    qvel = np.diff(qpos, axis=0, prepend=qpos[:1])
    frames = [render_frames(position, qpos[t], height, width) for t in range(episode_len)]

    images = {cam: np.stack([f[cam] for f in frames]) for cam in camera_names}
    reasonings = [reasoning_for_step(t, episode_len) for t in range(episode_len)]
    write_episode(path, action, qpos, qvel, images, LANGUAGE, reasonings, compress=compress, sim=sim)


def make_example_episodes(
    out_dir: str | Path,
    num_episodes: int = 6,
    episode_len: int = 50,
    height: int = 64,
    width: int = 64,
    seed: int = 0,
    compress: bool = False,
    camera_names: Sequence[str] = tuple(ALOHA_CAMERAS),
    sim: bool = True,
    state_dim: int = STATE_DIM,
) -> list[Path]:
    """Write ``episode_{i}.hdf5`` files into ``out_dir`` and return their paths (deterministic in ``seed``).

    ``sim=False`` marks them as real-robot recordings (training pairs frame ``t`` with ``action[t-1:]``).
    ``state_dim``: joints (state and action width); 14 is bimanual ALOHA, e.g. 7 a single arm.
    """
    unknown = set(camera_names) - {"cam_high", "cam_left_wrist", "cam_right_wrist"}
    if unknown:
        raise ValueError(f"make_example_episodes renders only the ALOHA cameras; unknown: {sorted(unknown)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(num_episodes):
        path = out_dir / f"episode_{i}.hdf5"
        make_episode(path, rng, episode_len, height, width, camera_names, compress, sim, state_dim)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write example ACT-layout HDF5 episodes.")
    parser.add_argument("out_dir")
    parser.add_argument("--num_episodes", type=int, default=6)
    parser.add_argument("--episode_len", type=int, default=50)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compress", action="store_true", help="store frames as JPEG bytes (ACT's compress)")
    parser.add_argument("--real_robot", action="store_true", help="mark the episodes as real-robot (sim=False)")
    args = parser.parse_args(argv)
    paths = make_example_episodes(
        args.out_dir, args.num_episodes, args.episode_len, args.height, args.width, args.seed, args.compress,
        sim=not args.real_robot,
    )
    print(f"wrote {len(paths)} episodes to {args.out_dir}")


if __name__ == "__main__":
    main()
