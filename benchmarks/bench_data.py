"""Throughput of the data path: EpisodicDataset samples/s with 0 and 2 DataLoader workers.

    python benchmarks/bench_data.py [--batch_size 8] [--batches 20]

Prints a table; generated episodes live in a temporary directory. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_utils.utils import load_data  # noqa: E402
from scripts.make_example_episodes import make_example_episodes  # noqa: E402

CAMERAS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]


def _collate_raw(samples: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in samples]) for k in ("image", "state", "action", "is_pad")}


def measure(dataset, workers: int, batch_size: int, batches: int) -> float:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=_collate_raw,
        persistent_workers=False, generator=torch.Generator().manual_seed(0),
    )
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    seen = 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        seen += batch["image"].shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for height, width, compress in ((56, 56, False), (480, 640, False), (480, 640, True)):
            out = Path(tmp) / f"{height}x{width}_{compress}"
            make_example_episodes(out, num_episodes=2, episode_len=40, height=height, width=width, compress=compress)
            for augment in (False, True):
                train, *_ = load_data(
                    [str(out)], None, CAMERAS, args.batch_size, args.batch_size, 16, train_ratio=1.0,
                    rank0_print=lambda *a: None,
                )
                train.augment_images = augment
                for workers in (0, 2):
                    rate = measure(train, workers, args.batch_size, args.batches)
                    rows.append((f"{height}x{width}", "jpeg" if compress else "raw", augment, workers, rate))
    print(f"{'frames':>8} {'storage':>7} {'augment':>7} {'workers':>7} {'samples/s':>10}")
    for frames, storage, augment, workers, rate in rows:
        print(f"{frames:>8} {storage:>7} {str(augment):>7} {workers:>7} {rate:>10.1f}")
    print("(EpisodicDataset raw samples, 3 cameras, chunk 16; through Qwen2VLAProcess: see the VLA issue)")


if __name__ == "__main__":
    main()
