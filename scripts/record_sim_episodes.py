#!/usr/bin/env python
"""Record scripted demonstrations in the gym-aloha simulation as ACT-layout HDF5 episodes.

    python scripts/record_sim_episodes.py --task transfer_cube --num_episodes 50 \
        [--out DIR] [--camera_names top left_wrist right_wrist] [--height 240 --width 320] [--compress]

Each episode: the scripted waypoint policy runs in end-effector (mocap) space, its joint trajectory is
replayed in gym-aloha's joint-space task from the same seed while the cameras are rendered, and the
replay is written as ``episode_{i}.hdf5`` with the task's instruction and a reasoning string per step
("reach the cube with the right gripper", "grasp ...", "lift ...", "hand over ..."). Only episodes whose
replay succeeds are written (``--keep_failed`` writes all); the success rate is printed and saved to
``OUT/record_summary.json``. Episode ``i`` uses seed ``--seed + i``.

The default output directory is that of the ``sim_transfer_cube_scripted`` task for ``transfer_cube``
(train with ``--task_name sim_transfer_cube_scripted``), else ``artifacts/sim_<task>_scripted``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aloha_scripts.constants import ARTIFACTS_DIR, TASK_CONFIGS  # noqa: E402
from data_utils.hdf5_io import write_episode  # noqa: E402

DEFAULT_CAMERAS = ("top", "left_wrist", "right_wrist")


def default_out_dir(task: str) -> Path:
    """The ``dataset_dir`` of the task's ``sim_<task>_scripted`` entry in ``TASK_CONFIGS``."""
    name = f"sim_{task}_scripted"
    if name in TASK_CONFIGS:
        return Path(TASK_CONFIGS[name]["dataset_dir"][0])
    return ARTIFACTS_DIR / name


def record_sim_episodes(
    task: str,
    out_dir: str | Path,
    num_episodes: int,
    seed: int = 0,
    camera_names: Sequence[str] = DEFAULT_CAMERAS,
    height: int = 240,
    width: int = 320,
    compress: bool = False,
    keep_failed: bool = False,
    episode_len: int | None = None,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> dict:
    """Record ``num_episodes`` scripted episodes; returns the summary (``success_rate``, per-seed results).

    ``dry_run``: render nothing and write nothing, only measure the scripted policy's success rate.
    ``overwrite``: allow writing into a directory that already holds episodes (they are removed first,
    so no stale ``episode_N.hdf5`` of an earlier, longer run stays behind).
    """
    from evaluate.aloha_sim.demonstrations import replay_in_joint_env, scripted_joint_trajectory
    from evaluate.aloha_sim.envs import get_sim_task

    spec = get_sim_task(task)
    out_dir = Path(out_dir)
    if not dry_run:
        existing = sorted(out_dir.glob("episode_*.hdf5")) if out_dir.exists() else []
        if existing and not overwrite:
            raise FileExistsError(f"{out_dir} already holds {len(existing)} episodes; pass --overwrite to replace them")
        for path in existing:
            path.unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
    results, written = [], 0
    for i in range(num_episodes):
        start = time.perf_counter()
        episode_seed = seed + i
        trajectory = scripted_joint_trajectory(task, episode_seed, episode_len)
        cameras = () if dry_run else camera_names
        replay = replay_in_joint_env(task, episode_seed, trajectory.actions, cameras, height, width)
        path = None
        if not dry_run and (replay.success or keep_failed):
            path = write_episode(
                out_dir / f"episode_{written}.hdf5", trajectory.actions, replay.qpos, replay.qvel, replay.images,
                spec.instruction, trajectory.reasoning, compress,
            )
            written += 1
        results.append(
            {"seed": episode_seed, "success": bool(replay.success), "max_reward": replay.max_reward,
             "ee_max_reward": trajectory.ee_max_reward, "file": None if path is None else path.name}
        )
        log(
            f"episode {i} (seed {episode_seed}): {'success' if replay.success else 'FAILED'} "
            f"(max reward {replay.max_reward}/4), {time.perf_counter() - start:.1f} s"
        )
    successes = sum(r["success"] for r in results)
    summary = {
        "task": task,
        "num_episodes": num_episodes,
        "num_success": successes,
        "success_rate": successes / max(num_episodes, 1),
        "num_written": written,
        "camera_names": list(camera_names),
        "image_size": [height, width],
        "dry_run": dry_run,
        "episodes": results,
    }
    if not dry_run:
        (out_dir / "record_summary.json").write_text(json.dumps(summary, indent=2))
    log(f"scripted {task}: {successes}/{num_episodes} successful ({100 * summary['success_rate']:.0f}%), "
        f"{written} episodes written to {out_dir}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="transfer_cube", choices=["transfer_cube", "insertion"])
    parser.add_argument("--out", default=None, help="output directory (default: see above)")
    parser.add_argument("--num_episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="episode i is placed with seed + i")
    parser.add_argument("--camera_names", nargs="+", default=list(DEFAULT_CAMERAS))
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--episode_len", type=int, default=None, help="steps per episode (default: the task's 400)")
    parser.add_argument("--compress", action="store_true", help="store frames as JPEG bytes (ACT's compress)")
    parser.add_argument("--keep_failed", action="store_true", help="also write episodes whose replay failed")
    parser.add_argument("--dry_run", action="store_true", help="only measure the success rate: no images, no files")
    parser.add_argument("--overwrite", action="store_true", help="replace the episodes already in the output directory")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else default_out_dir(args.task)
    record_sim_episodes(
        args.task, out, args.num_episodes, args.seed, args.camera_names, args.height, args.width, args.compress,
        args.keep_failed, args.episode_len, args.dry_run, overwrite=args.overwrite,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
