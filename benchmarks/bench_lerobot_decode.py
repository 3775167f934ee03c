"""Frame reads/s of ``data_utils.lerobot_io``: in order vs at random, on the committed LeRobot fixture
and on longer synthetic mp4s (AV1 as LeRobot writes it, H.264 with a short and a long GOP).

    OMP_NUM_THREADS=1 python benchmarks/bench_lerobot_decode.py [--frames 480x640] [--length 300] [--reads 200]

Prints a table; synthetic videos live in a temporary directory. Not a test. "packets/read" is how many
packets went through the decoder per frame asked for: 1 in order, about half a GOP more at random (the
reader drains decoders that hold frames back, as H.264 does, rather than decode further packets), and
the "from start" row shows what decoding from the file's start for every read would cost.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import av  # imported up front so that its import time is not counted in the first row
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_utils.lerobot_io import LeRobotRoot, _VideoReader  # noqa: E402
from data_utils.video_encode import encode_video  # noqa: E402

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "data" / "lerobot_fixture"


def _rate(fn, items) -> tuple[float, int]:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start), len(items)


def bench_fixture(rows: list[tuple]) -> None:
    probe = LeRobotRoot(FIXTURE)
    for camera in probe.camera_keys:
        kind = probe.features[camera]["dtype"]
        height, width, _ = probe.image_shape(camera)
        keys = [(e.index, t) for e in probe.episodes for t in range(e.length)]
        for order in ("in order", "random"):
            items = list(keys)
            if order == "random":
                random.Random(0).shuffle(items)
            root = LeRobotRoot(FIXTURE)
            for ep in root.episodes:  # arrays are cached per process (timestamps); time the frames only
                root.read_episode_arrays(ep.index)
            rate, n = _rate(lambda k, root=root, camera=camera: root.read_frame(camera, *k), items)
            decoded = ""
            if kind == "video":
                reader = next(iter(root._videos.values()))
                decoded = f"{reader.packets / n:.1f}"
            stored = "av1 g=2 (mp4)" if kind == "video" else "png (parquet)"
            rows.append((f"fixture {camera.split('.')[-1]}", stored, f"{width}x{height}", order, rate, decoded))


def _synthetic_frames(length: int, height: int, width: int):
    """Textured frames that move, so the codec has real work (not a flat picture)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 40, size=(height, width, 3)).astype(np.float32)
    for t in range(length):
        base = 100 + 60 * np.sin((xx + 3 * t) / 23.0)[..., None] + 40 * np.cos((yy - 2 * t) / 17.0)[..., None]
        yield np.clip(base + texture, 0, 255).astype(np.uint8)


def bench_synthetic(rows: list[tuple], length: int, height: int, width: int, reads: int, fps: int = 50) -> None:
    interval = 1.0 / fps
    with tempfile.TemporaryDirectory() as tmp:
        for codec, gop in (("libsvtav1", 2), ("libx264", 2), ("libx264", 50)):
            path = Path(tmp) / f"{codec}_g{gop}.mp4"
            start = time.perf_counter()
            encode_video(path, _synthetic_frames(length, height, width), fps, codec=codec, gop=gop)
            encode_rate = length / (time.perf_counter() - start)
            name = f"{'av1' if codec == 'libsvtav1' else 'h264'} g={gop}"
            label = f"synthetic {length} fr ({path.stat().st_size // 1024} KiB, enc {encode_rate:.0f} fr/s)"
            for order in ("in order", "random"):
                items = list(range(length)) if order == "in order" else random.Random(0).choices(range(length), k=reads)
                reader = _VideoReader(path, threads=1, forward_frames=4)
                rate, n = _rate(lambda t, reader=reader: reader.frame_at(t * interval, interval), items)
                rows.append((label, name, f"{width}x{height}", order, rate, f"{reader.packets / n:.1f}"))
                reader.close()
            # What a reader without seeking pays: decode from the start up to each wanted frame.
            items = random.Random(1).choices(range(length), k=max(3, reads // 20))
            decoded = 0

            def from_start(t: int, path: Path = path) -> None:
                nonlocal decoded
                with av.open(str(path)) as container:
                    stream = container.streams.video[0]
                    stream.codec_context.thread_count = 1
                    for frame in container.decode(stream):
                        decoded += 1
                        if frame.time >= (t - 0.4) * interval:
                            frame.to_ndarray(format="rgb24")
                            break

            rate, n = _rate(from_start, items)
            rows.append((label, name, f"{width}x{height}", "from start", rate, f"{decoded / n:.1f}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", default="480x640", help="HxW of the synthetic videos")
    parser.add_argument("--length", type=int, default=300, help="frames in each synthetic video")
    parser.add_argument("--reads", type=int, default=200, help="random reads per synthetic video")
    args = parser.parse_args()
    height, width = (int(v) for v in args.frames.lower().split("x"))
    rows: list[tuple] = []
    bench_fixture(rows)
    bench_synthetic(rows, args.length, height, width, args.reads)
    header = ("source", "stored as", "WxH", "access", "frames/s", "packets/read")
    widths = [max(len(str(r[i])) if i != 4 else 8 for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        cells = [*row[:4], f"{row[4]:.0f}", row[5]]
        print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)))


if __name__ == "__main__":
    main()
