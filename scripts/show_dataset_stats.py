"""Load a task's episodes as training would, then print and save its normalisation statistics.

    python scripts/show_dataset_stats.py --task_name example_tasks [--chunk_size 16] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aloha_scripts.constants import get_task_config  # noqa: E402
from data_utils.normalization import NormStats  # noqa: E402
from data_utils.utils import load_data  # noqa: E402


def format_stats(stats: NormStats) -> str:
    rows = [f"{'dim':>4} {'action_min':>11} {'action_max':>11} {'action_mean':>11} {'qpos_mean':>10} {'qpos_std':>9}"]
    for d in range(max(stats.action_dim, stats.state_dim)):
        a = (
            f"{stats.action_min[d]:11.4f} {stats.action_max[d]:11.4f} {stats.action_mean[d]:11.4f}"
            if d < stats.action_dim
            else " " * 35
        )
        q = f"{stats.qpos_mean[d]:10.4f} {stats.qpos_std[d]:9.4f}" if d < stats.state_dim else ""
        rows.append(f"{d:>4} {a} {q}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task_name", default="example_tasks")
    parser.add_argument("--chunk_size", type=int, default=16)
    parser.add_argument("--out", default=None, help="directory to write dataset_stats.json into")
    args = parser.parse_args(argv)
    task = get_task_config(args.task_name)
    train, val, stats, _ = load_data(
        task["dataset_dir"],
        task["name_filter"],
        task["camera_names"],
        1,
        1,
        args.chunk_size,
        stats_dir_l=task["stats_dir"],
        sample_weights=task["sample_weights"],
        train_ratio=task["train_ratio"],
    )
    sample = train[0]
    print(f"task {args.task_name}: {stats.num_episodes} episodes, {stats.num_steps} steps; "
          f"train {len(train)} steps, val {len(val) if val is not None else 0} steps")
    print("sample: " + ", ".join(
        f"{k} {tuple(v.shape)} {v.dtype}" if hasattr(v, "shape") else f"{k} {v!r}" for k, v in sample.items()
    ))
    print(format_stats(stats))
    if args.out:
        print(f"wrote {stats.save(args.out)}")


if __name__ == "__main__":
    main()
