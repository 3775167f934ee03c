"""Image sizes, per-camera resizing and training augmentation, shared by training and evaluation."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

_SIZE_PATTERN = re.compile(r"^\s*[\(\[]?\s*(\d+)\s*[,x×]\s*(\d+)\s*[\)\]]?\s*$")


def parse_image_size(value: str | Sequence[int]) -> tuple[int, int]:
    """Parse ``"(320,240)"``, ``"320,240"``, ``"320x240"`` or ``(320, 240)`` into ``(width, height)``.

    The reference ran ``eval()`` on this command-line string; a regex parses it without executing it.
    """
    if isinstance(value, str):
        match = _SIZE_PATTERN.match(value)
        if not match:
            raise ValueError(f"image size {value!r} is not of the form '(width,height)', e.g. '(320,240)'")
        width, height = int(match.group(1)), int(match.group(2))
    else:
        if len(value) != 2:
            raise ValueError(f"image size {value!r} must have two entries (width, height)")
        width, height = int(value[0]), int(value[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {value!r} must be positive")
    return width, height


def is_wrist_camera(camera_name: str) -> bool:
    return "wrist" in camera_name


def camera_image_size(
    camera_name: str, image_size_stable: tuple[int, int], image_size_wrist: tuple[int, int]
) -> tuple[int, int]:
    """``(width, height)`` a camera's frames are resized to: wrist cameras get ``image_size_wrist``."""
    return image_size_wrist if is_wrist_camera(camera_name) else image_size_stable


def to_pil_images(
    images: torch.Tensor | np.ndarray,
    camera_names: Sequence[str],
    image_size_stable: tuple[int, int],
    image_size_wrist: tuple[int, int],
) -> list[Image.Image]:
    """Turn ``(num_cams, 3, H, W)`` (or ``(num_cams, H, W, 3)``) uint8 frames into per-camera resized PIL images.

    This is the single pre-processing step both training and the policy wrapper call, so the
    resize seen at evaluation can never drift from the one seen in training.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if images.ndim != 4 or len(images) != len(camera_names):
        raise ValueError(
            f"images must be (num_cams={len(camera_names)}, 3, H, W) or (num_cams, H, W, 3); got {images.shape}"
        )
    if images.shape[1] == 3 and images.shape[-1] != 3:
        images = images.transpose(0, 2, 3, 1)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    out = []
    for frame, camera in zip(images, camera_names, strict=True):
        size = camera_image_size(camera, image_size_stable, image_size_wrist)
        img = Image.fromarray(np.ascontiguousarray(frame))
        if img.size != size:
            img = img.resize(size, Image.Resampling.BILINEAR)
        out.append(img)
    return out


def build_train_augmentation(height: int, width: int) -> v2.Transform:
    """Random 95% crop (resized back), ±5° rotation and colour jitter, as the reference's diffusion path.

    Applied to the stacked ``(num_cams, 3, H, W)`` tensor, so one random draw is shared by all cameras.
    """
    crop = (max(1, int(round(height * 0.95))), max(1, int(round(width * 0.95))))
    return v2.Compose(
        [
            v2.RandomCrop(size=crop),
            v2.Resize(size=(height, width), antialias=True),
            v2.RandomRotation(degrees=(-5.0, 5.0)),
            v2.ColorJitter(brightness=0.3, contrast=0.4, saturation=0.5),
        ]
    )
