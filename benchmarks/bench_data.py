"""Throughput of the data path: EpisodicDataset samples/s with 0, 1 and 8 DataLoader workers, raw samples
and samples through Qwen2VLAProcess + the collator (Qwen2-VL-2B's pixel budget, frames trained at 320x240),
and the same samples read from HDF5 and from LeRobot roots side by side.

    python benchmarks/bench_data.py [--batch_size 8] [--batches 20] [--workers 0 1 8] [--frames 480x640]
        [--sections hdf5 lerobot] [--lerobot_episodes 8] [--lerobot_len 80] [--lerobot_codecs libsvtav1 h264]

Prints tables; generated episodes live in a temporary directory. Not a test. Every frame is resized to
the training size first and augmented there (``CameraImageTransform``); the loader shuffles, as training.

The LeRobot section writes textured 480x640 episodes (3 cameras, as ALOHA records them; flat pictures
would make video decoding unrealistically cheap) as raw and JPEG HDF5, converts the raw ones with
``scripts/convert_hdf5_to_lerobot.py`` (AV1 as the library writes it, and H.264, both with a keyframe
every 2 frames), and times the same ``load_data`` datasets on each: the ratio column is LeRobot's
samples/s over raw HDF5's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_utils.data_collator import Qwen2VLADataCollatorForSupervisedDataset  # noqa: E402
from data_utils.hdf5_io import write_episode  # noqa: E402
from data_utils.utils import load_data  # noqa: E402
from qwen2_vla.robot_data_processor import Qwen2VLAProcess  # noqa: E402
from scripts.convert_hdf5_to_lerobot import convert_hdf5_to_lerobot  # noqa: E402
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


def bench_hdf5(args: argparse.Namespace, tmp: Path) -> None:
    """The HDF5 rows: flat example episodes at each ``--frames`` size, raw samples and through the processor."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    rows = []
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


def textured_frames(length: int, height: int, width: int, seed: int) -> np.ndarray:
    """``(length, H, W, 3)`` uint8: a smooth random texture (camera-like detail, sigma 4 px) panning over
    time with a little fine noise, so that a video codec has a realistic amount of work."""
    import cv2  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    pad_y, pad_x = 64, 256
    texture = cv2.GaussianBlur(rng.normal(0, 1, size=(height + pad_y, width + pad_x, 3)).astype(np.float32), (0, 0), 4)
    texture = 128 + texture * (50 / texture.std()) + rng.normal(0, 2, size=texture.shape).astype(np.float32)
    texture = np.clip(texture, 0, 255).astype(np.uint8)
    out = np.empty((length, height, width, 3), dtype=np.uint8)
    for t in range(length):
        y, x = (t // 3) % pad_y, (2 * t) % pad_x
        out[t] = texture[y : y + height, x : x + width]
    return out


def make_textured_episodes(out: Path, episodes: int, length: int, height: int, width: int, compress: bool) -> None:
    """ACT-layout episodes with textured frames (deterministic); state and action are a random walk."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for e in range(episodes):
        qpos = np.cumsum(rng.normal(0, 0.02, size=(length, 14)), axis=0).astype(np.float32)
        action = np.concatenate([qpos[1:], qpos[-1:]])
        images = {cam: textured_frames(length, height, width, seed=100 * e + i) for i, cam in enumerate(CAMERAS)}
        reasoning = ["reach" if t < length // 2 else "grasp" for t in range(length)]
        write_episode(out / f"episode_{e}.hdf5", action, qpos, np.zeros_like(qpos), images, "pick the block",
                      reasoning, compress=compress)


def bench_lerobot(args: argparse.Namespace, tmp: Path) -> None:
    """Raw HDF5, JPEG HDF5 and LeRobot roots of the same textured episodes: samples/s side by side."""
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration per file otherwise
    height, width = 480, 640
    sources: dict[str, Path] = {}
    timings = []
    start = time.perf_counter()
    for storage, compress in (("hdf5 raw", False), ("hdf5 jpeg", True)):
        sources[storage] = tmp / storage.replace(" ", "_")
        make_textured_episodes(sources[storage], args.lerobot_episodes, args.lerobot_len, height, width, compress)
    timings.append(f"HDF5 written in {time.perf_counter() - start:.0f} s")
    for codec in args.lerobot_codecs:
        name = f"lerobot {'av1' if codec == 'libsvtav1' else codec}"
        sources[name] = tmp / name.replace(" ", "_")
        summary = convert_hdf5_to_lerobot(sources["hdf5 raw"], sources[name], vcodec=codec, progress=False)
        size = sum(f.stat().st_size for f in sources[name].rglob("*.mp4")) / summary["frames"] / len(CAMERAS)
        timings.append(f"{name}: converted in {summary['seconds']:.0f} s, {size / 1024:.0f} KiB per image")
    rates: dict[tuple[str, bool, int], float] = {}
    for augment in (False, True):
        for storage, path in sources.items():
            train, *_ = load_data(
                [str(path)], None, CAMERAS, args.batch_size, args.batch_size, 16, train_ratio=1.0,
                rank0_print=lambda *a: None, config={"data_args": _DataArgs(augment)}, policy_class="scale_dp_policy",
            )
            for workers in args.workers:
                rates[storage, augment, workers] = measure(train, workers, args.batch_size, args.batches)
    names = list(sources)
    lerobot = [n for n in names if n.startswith("lerobot")]
    header = f"{'augment':>7} {'workers':>7} " + " ".join(f"{n:>11}" for n in names)
    header += " " + " ".join(f"{n.removeprefix('lerobot ') + '/raw':>9}" for n in lerobot)
    print(f"\nsamples/s, {args.lerobot_episodes} episodes x {args.lerobot_len} steps, 3 cameras {height}x{width} "
          f"(textured), chunk 16, frames trained at 320x240, batch {args.batch_size}, shuffled")
    print(header)
    for augment in (False, True):
        for workers in args.workers:
            line = f"{str(augment):>7} {workers:>7} " + " ".join(f"{rates[n, augment, workers]:>11.1f}" for n in names)
            raw = rates["hdf5 raw", augment, workers]
            line += " " + " ".join(f"{rates[n, augment, workers] / raw:>9.2f}" for n in lerobot)
            print(line)
    print("; ".join(timings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 8])
    parser.add_argument("--frames", nargs="+", default=["56x56", "480x640", "480x640jpeg"])
    parser.add_argument("--sections", nargs="+", choices=["hdf5", "lerobot"], default=["hdf5", "lerobot"])
    parser.add_argument("--lerobot_episodes", type=int, default=8, help="textured episodes of the LeRobot section")
    parser.add_argument("--lerobot_len", type=int, default=80, help="steps per textured episode")
    parser.add_argument("--lerobot_codecs", nargs="+", default=["libsvtav1", "h264"], help="converter --vcodec values")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if "hdf5" in args.sections:
            bench_hdf5(args, Path(tmp))
        if "lerobot" in args.sections:
            bench_lerobot(args, Path(tmp))


if __name__ == "__main__":
    main()
