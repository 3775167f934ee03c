"""What inference needs from a checkpoint beyond the model: the image sizes the training pre-processing used.

A checkpoint directory holds ``config.json`` + weights, the processor files and ``dataset_stats.json``.
The per-camera resize (``image_size_stable`` / ``image_size_wrist``, training's ``DataArguments``) is
part of the pre-processing, so it has to come from the checkpoint as well. It is looked up, first hit
wins, in:

1. explicit arguments (``--image_size_stable`` / ``--image_size_wrist``);
2. ``eval_config.json`` in the checkpoint directory (``{"image_size_stable": "(320,240)", ...}``), a file
   one can add to a checkpoint written before the trainer recorded the sizes;
3. ``image_size_stable`` / ``image_size_wrist`` in the checkpoint's ``config.json`` (``Qwen2VLAConfig``
   fields the trainer fills from its ``DataArguments``): the normal case.

Nothing found is an error that says which of these to provide; a silent default would resize differently
from training, which is exactly the drift this module exists to prevent.

The crop of training (``image_crop_ratio``: 0.95 when it augmented, repeated here as a centre crop) is
looked up the same way. A checkpoint written before the trainer recorded it has none: no crop is
applied and a warning says how to set it (``--image_crop_ratio 0.95`` for a diffusion head trained with
the default augmentation).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_utils.image_utils import parse_image_size

logger = logging.getLogger(__name__)

EVAL_CONFIG_FILE = "eval_config.json"
IMAGE_SIZE_KEYS = ("image_size_stable", "image_size_wrist")
CROP_KEY = "image_crop_ratio"


@dataclass(frozen=True)
class InferenceConfig:
    """``(width, height)`` of stable and wrist cameras after the training resize, and where they came from."""

    image_size_stable: tuple[int, int]
    image_size_wrist: tuple[int, int]
    source: str
    image_crop_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def save_eval_config(
    ckpt_dir: str | os.PathLike, image_size_stable: Any, image_size_wrist: Any, image_crop_ratio: float | None = None
) -> Path:
    """Write ``eval_config.json`` (``"(width,height)"`` strings and the training crop) into ``ckpt_dir``."""
    stable, wrist = parse_image_size(image_size_stable), parse_image_size(image_size_wrist)
    path = Path(ckpt_dir) / EVAL_CONFIG_FILE
    path.write_text(json.dumps({"image_size_stable": f"({stable[0]},{stable[1]})",
                                "image_size_wrist": f"({wrist[0]},{wrist[1]})", CROP_KEY: image_crop_ratio}, indent=2))
    return path


def load_inference_config(
    ckpt_dir: str | os.PathLike,
    image_size_stable: Any | None = None,
    image_size_wrist: Any | None = None,
    image_crop_ratio: float | None = None,
) -> InferenceConfig:
    """Resolve the image sizes of ``ckpt_dir`` (see the module docstring for the order)."""
    ckpt_dir = Path(ckpt_dir)
    explicit = {"image_size_stable": image_size_stable, "image_size_wrist": image_size_wrist, CROP_KEY: image_crop_ratio}
    layers = [
        ("arguments", explicit),
        (str(ckpt_dir / EVAL_CONFIG_FILE), _read_json(ckpt_dir / EVAL_CONFIG_FILE)),
        (str(ckpt_dir / "config.json"), _read_json(ckpt_dir / "config.json")),
    ]
    found: dict[str, tuple[int, int]] = {}
    sources: dict[str, str] = {}
    for source, values in layers:
        for key in IMAGE_SIZE_KEYS:
            if key not in found and values.get(key) is not None:
                try:
                    found[key] = parse_image_size(values[key])
                except ValueError as err:
                    raise ValueError(f"{source}: {key}: {err}") from None
                sources[key] = source
    missing = [k for k in IMAGE_SIZE_KEYS if k not in found]
    if missing:
        raise ValueError(
            f"checkpoint {ckpt_dir} does not say which image sizes it was trained with ({', '.join(missing)}; "
            "checkpoints of the current trainer carry them in config.json): "
            f"add {EVAL_CONFIG_FILE} with "
            '{"image_size_stable": "(W,H)", "image_size_wrist": "(W,H)"} (the training run\'s --image_size_* '
            "values), or pass --image_size_stable/--image_size_wrist"
        )
    crop = next((v[CROP_KEY] for _, v in layers if v.get(CROP_KEY) is not None), None)
    if not any(CROP_KEY in values for _, values in layers[1:]) and image_crop_ratio is None:
        logger.warning(
            "%s does not record %s (written before the trainer saved it): no crop at inference. A diffusion "
            "head trained with the default augmentation saw a 0.95 crop: pass --image_crop_ratio 0.95",
            ckpt_dir, CROP_KEY,
        )
    if crop is not None and not 0.0 < float(crop) <= 1.0:
        raise ValueError(f"{ckpt_dir}: {CROP_KEY}={crop!r} must be in (0, 1]")
    source = ", ".join(sorted(set(sources.values())))
    return InferenceConfig(
        found["image_size_stable"], found["image_size_wrist"], source, None if crop is None else float(crop)
    )


__all__ = ["EVAL_CONFIG_FILE", "InferenceConfig", "load_inference_config", "save_eval_config"]
