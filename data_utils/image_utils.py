"""Image sizes, per-camera resizing and training augmentation, shared by training and evaluation."""

from __future__ import annotations

import re
from collections.abc import Sequence

import cv2
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


# The reference's augmentation crops 95% of the frame at random and resizes it back (a 1/0.95 zoom); its
# evaluation centre-crops the same fraction, so objects keep the size the policy was trained on.
DEFAULT_CROP_RATIO = 0.95


def build_train_augmentation(height: int, width: int, crop_ratio: float = DEFAULT_CROP_RATIO) -> v2.Transform:
    """Random ``crop_ratio`` crop (resized back), ±5° rotation and colour jitter, as the reference's diffusion path.

    Applied to the stacked ``(num_cams, 3, H, W)`` tensor, so one random draw is shared by all cameras.
    """
    return v2.Compose(
        [
            v2.RandomCrop(size=crop_size(height, width, crop_ratio)),
            v2.Resize(size=(height, width), antialias=True),
            v2.RandomRotation(degrees=(-5.0, 5.0)),
            v2.ColorJitter(brightness=0.3, contrast=0.4, saturation=0.5),
        ]
    )


def build_eval_transform(height: int, width: int, crop_ratio: float = DEFAULT_CROP_RATIO) -> v2.Transform:
    """The deterministic form of :func:`build_train_augmentation`: centre crop of the same fraction, same resize."""
    return v2.Compose(
        [
            v2.CenterCrop(size=crop_size(height, width, crop_ratio)),
            v2.Resize(size=(height, width), antialias=True),
        ]
    )


def crop_size(height: int, width: int, crop_ratio: float) -> tuple[int, int]:
    return max(1, int(round(height * crop_ratio))), max(1, int(round(width * crop_ratio)))


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(height, width, 3)`` uint8 at ``size = (width, height)``.

    OpenCV's bilinear resize, as the reference shrinks frames before augmenting: ~25x faster than
    Pillow's on a 480x640 frame, and the pixels a reference-trained checkpoint was trained on.
    """
    if (frame.shape[1], frame.shape[0]) == tuple(size):
        return frame
    return cv2.resize(np.ascontiguousarray(frame), tuple(size), interpolation=cv2.INTER_LINEAR)


class CameraImageTransform:
    """Raw camera frames -> the ``(num_cams, 3, H, W)`` uint8 images a sample carries; shared by training and inference.

    Each camera's frame is first resized to ``image_size`` (``(width, height)``, the stable cameras' training
    size; as the reference, every camera goes through it, so cameras of any resolution, mixed within one
    episode, come out alike), then cropped: during training at random with the augmentation
    (:func:`build_train_augmentation`), otherwise with its deterministic form (:func:`build_eval_transform`).
    ``crop_ratio=None`` means training did not augment: no crop at all. Resizing first also makes the
    augmentation cheap (it runs at the training size, not the camera's). ``image_size=None`` keeps the
    frames' own size (they must then share one); the crop is sized for each frame it gets.
    """

    def __init__(
        self, image_size: tuple[int, int] | str | None, crop_ratio: float | None = DEFAULT_CROP_RATIO
    ) -> None:
        if crop_ratio is not None and not 0.0 < crop_ratio <= 1.0:
            raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
        self.image_size = None if image_size is None else parse_image_size(image_size)
        self.crop_ratio = crop_ratio
        self._transforms: dict[tuple[int, int, bool], v2.Transform] = {}

    def _transform(self, height: int, width: int, train: bool) -> v2.Transform:
        key = (height, width, train)
        if key not in self._transforms:
            build = build_train_augmentation if train else build_eval_transform
            self._transforms[key] = build(height, width, self.crop_ratio)
        return self._transforms[key]

    def __call__(self, frames: Sequence[np.ndarray], seed: int | None = None) -> torch.Tensor:
        """``frames``: one ``(H, W, 3)`` uint8 array per camera -> ``(num_cams, 3, height, width)`` uint8.

        ``seed`` given: the random training augmentation, drawn from ``seed`` alone (the global RNG is
        left as it was). ``None``: the deterministic form, as inference uses.
        """
        if self.image_size is not None:
            frames = [resize_frame(frame, self.image_size) for frame in frames]
        shapes = {frame.shape for frame in frames}
        if len(shapes) != 1:
            raise ValueError(
                f"camera frames have different shapes {sorted(shapes)} and no image_size to resize them to"
            )
        images = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
        if self.crop_ratio is None:
            return images
        height, width = images.shape[-2:]
        if seed is None:
            return self._transform(height, width, train=False)(images)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._transform(height, width, train=True)(images)
