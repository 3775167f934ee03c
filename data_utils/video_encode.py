"""Encoding frames to an mp4 with PyAV, with LeRobot's writer settings as defaults.

LeRobot (0.4.x) writes each camera as AV1 (``libsvtav1``), ``yuv420p``, constant quality ``crf=30``
and a keyframe every 2 frames (``g=2``, cheap random access). H.264 (``libx264``) is the other codec
common in published datasets. Both encoders ship in PyAV's wheel.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

DEFAULT_CODEC = "libsvtav1"
DEFAULT_GOP = 2
DEFAULT_CRF = 30


def encode_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: int,
    codec: str = DEFAULT_CODEC,
    gop: int = DEFAULT_GOP,
    crf: int | None = DEFAULT_CRF,
    pix_fmt: str = "yuv420p",
) -> int:
    """Write ``(H, W, 3)`` uint8 RGB ``frames`` (streamed: one in memory at a time) to ``path``.

    Frame ``i`` gets presentation time ``i / fps``. Returns the number of frames written. Even
    width and height are required by ``yuv420p``.
    """
    import av  # noqa: PLC0415 - only video writers need it

    path = Path(path)
    count = 0
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(int(fps), 1))
        stream.pix_fmt = pix_fmt
        options = {"g": str(gop)}
        if crf is not None:
            options["crf"] = str(crf)
        if codec == "libsvtav1":
            options["preset"] = "12"  # LeRobot's choice too: fastest, fine for small frames
        stream.options = options
        for image in frames:
            image = np.ascontiguousarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"{path}: frame {count} must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
            if count == 0:
                stream.height, stream.width = image.shape[:2]
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = count
            frame.time_base = Fraction(1, int(fps))
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    return count
