"""Throughput of the data path: EpisodicDataset samples/s with 0 and 2 DataLoader workers,
raw samples and samples through Qwen2VLAProcess + the collator (tiny offline processor).

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

from data_utils.data_collator import Qwen2VLADataCollatorForSupervisedDataset  # noqa: E402
from data_utils.utils import load_data  # noqa: E402
from qwen2_vla.robot_data_processor import Qwen2VLAProcess  # noqa: E402
from scripts.make_example_episodes import make_example_episodes  # noqa: E402
from scripts.make_tiny_qwen2_vl import build_tiny_qwen2_vl  # noqa: E402

CAMERAS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]


def _collate_raw(samples: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in samples]) for k in ("image", "state", "action", "is_pad")}


class _ImageSizes:
    image_size_stable = "(320,240)"
    image_size_wrist = "(320,240)"


def measure(dataset, workers: int, batch_size: int, batches: int, collate_fn=_collate_raw) -> float:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collate_fn,
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
        seen += batch["actions" if "actions" in batch else "image"].shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import AutoProcessor, AutoTokenizer

        model_dir = build_tiny_qwen2_vl(Path(tmp) / "tiny")
        tokenizer, processor = AutoTokenizer.from_pretrained(model_dir), AutoProcessor.from_pretrained(model_dir)
        process = Qwen2VLAProcess(tokenizer, processor, _ImageSizes(), CAMERAS)
        collator = Qwen2VLADataCollatorForSupervisedDataset(processor, None, tokenizer)
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
                    rows.append((f"{height}x{width}", "jpeg" if compress else "raw", augment, workers, "sample", rate))
                train.llava_pythia_process = process
                for workers in (0, 2):
                    rate = measure(train, workers, args.batch_size, args.batches, collator)
                    rows.append((f"{height}x{width}", "jpeg" if compress else "raw", augment, workers, "VLA", rate))
    print(f"{'frames':>8} {'storage':>7} {'augment':>7} {'workers':>7} {'output':>7} {'samples/s':>10}")
    for frames, storage, augment, workers, output, rate in rows:
        print(f"{frames:>8} {storage:>7} {str(augment):>7} {workers:>7} {output:>7} {rate:>10.1f}")
    print("3 cameras, chunk 16. sample: EpisodicDataset dict; VLA: through Qwen2VLAProcess (frames resized")
    print("to 320x240, tiny Qwen2-VL processor) and the collator.")


if __name__ == "__main__":
    main()
