"""Throughput of the data path: EpisodicDataset samples/s with 0, 1 and 8 DataLoader workers, raw samples
and samples through Qwen2VLAProcess + the collator (Qwen2-VL-2B's pixel budget, frames trained at 320x240).

    python benchmarks/bench_data.py [--batch_size 8] [--batches 20] [--workers 0 1 8] [--frames 480x640]

Prints a table; generated episodes live in a temporary directory. Not a test. Every frame is resized to
the training size first and augmented there (``CameraImageTransform``).
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


class _DataArgs:
    image_size_stable = "(320,240)"
    image_size_wrist = "(320,240)"
    use_reasoning = True

    def __init__(self, augment_images: bool) -> None:
        self.augment_images = augment_images


def _real_processor(tokenizer):
    """The tiny tokenizer with Qwen2-VL-2B-Instruct's image processor settings (56*56 .. 28*28*1280 pixels)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    pixels = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


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
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 8])
    parser.add_argument("--frames", nargs="+", default=["56x56", "480x640", "480x640jpeg"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import AutoTokenizer

        model_dir = build_tiny_qwen2_vl(Path(tmp) / "tiny")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        processor = _real_processor(tokenizer)
        process = Qwen2VLAProcess(tokenizer, processor, _DataArgs(False), CAMERAS)
        collator = Qwen2VLADataCollatorForSupervisedDataset(processor, None, tokenizer)
        for frames in args.frames:
            compress = frames.endswith("jpeg")
            height, width = (int(v) for v in frames.removesuffix("jpeg").split("x"))
            out = Path(tmp) / frames
            make_example_episodes(out, num_episodes=2, episode_len=40, height=height, width=width, compress=compress)
            for augment in (False, True):
                train, *_ = load_data(
                    [str(out)], None, CAMERAS, args.batch_size, args.batch_size, 16, train_ratio=1.0,
                    rank0_print=lambda *a: None, config={"data_args": _DataArgs(augment)},
                    policy_class="scale_dp_policy",
                )
                for workers in args.workers:
                    rate = measure(train, workers, args.batch_size, args.batches)
                    rows.append((f"{height}x{width}", "jpeg" if compress else "raw", augment, workers, "sample", rate))
                train.llava_pythia_process = process
                for workers in args.workers:
                    rate = measure(train, workers, args.batch_size, args.batches, collator)
                    rows.append((f"{height}x{width}", "jpeg" if compress else "raw", augment, workers, "VLA", rate))
    print(f"{'frames':>8} {'storage':>7} {'augment':>7} {'workers':>7} {'output':>7} {'samples/s':>10}")
    for frames, storage, augment, workers, output, rate in rows:
        print(f"{frames:>8} {storage:>7} {str(augment):>7} {workers:>7} {output:>7} {rate:>10.1f}")
    print("3 cameras, chunk 16, frames trained at 320x240. sample: EpisodicDataset dict; VLA: through")
    print("Qwen2VLAProcess (Qwen2-VL-2B's image processor: 99 tokens per camera) and the collator.")


if __name__ == "__main__":
    main()
