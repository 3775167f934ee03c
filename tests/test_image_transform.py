"""One image transform for training and inference: resize first, then training's crop (random or centred)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data_utils.dataset import EpisodicDataset
from data_utils.hdf5_io import episode_length, write_episode
from data_utils.image_utils import DEFAULT_CROP_RATIO, CameraImageTransform
from data_utils.utils import load_data
from tests.conftest import CAMERAS

STABLE, WRIST = (64, 48), (32, 24)  # (width, height) of training, as --image_size_stable / --image_size_wrist


def _striped_frames(length: int, height: int, width: int, seed: int) -> np.ndarray:
    """``(T, H, W, 3)`` frames: random texture, the top tenth of the rows pure red (to measure the crop)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 120, size=(length, height, width, 3), dtype=np.uint8)
    frames[:, : height // 10] = (255, 0, 0)
    return frames


def _write(path: Path, sizes: dict[str, tuple[int, int]], length: int = 6, seed: int = 0) -> Path:
    """An episode whose cameras have the ``(height, width)`` given per camera."""
    rng = np.random.default_rng(seed)
    actions = rng.normal(size=(length, 14)).astype(np.float32)
    qpos = rng.normal(size=(length, 14)).astype(np.float32)
    images = {cam: _striped_frames(length, h, w, seed + i) for i, (cam, (h, w)) in enumerate(sizes.items())}
    return write_episode(path, actions, qpos, np.zeros_like(qpos), images, "pick up the cube", ["reach"] * length)


def _red_row_fraction(image: torch.Tensor) -> float:
    """Fraction of rows of a ``(3, H, W)`` uint8 image that are mostly red (robust to colour jitter and ±5°)."""
    channels = image.int()
    red = channels[0] - torch.maximum(channels[1], channels[2]) > 80
    return float((red.float().mean(dim=1) > 0.6).float().mean())


def test_eval_form_is_a_centre_crop_of_the_training_size():
    frame = _striped_frames(1, 480, 640, 0)[0]
    out = CameraImageTransform(STABLE, DEFAULT_CROP_RATIO)([frame])
    assert out.shape == (1, 3, STABLE[1], STABLE[0]) and out.dtype == torch.uint8
    # 10% red rows, 2.5% cut from the top, zoomed by 1/0.95: (0.10 - 0.025) / 0.95 = 7.9% of the rows.
    assert _red_row_fraction(out[0]) == pytest.approx(0.079, abs=0.03)
    uncropped = CameraImageTransform(STABLE, None)([frame])
    assert _red_row_fraction(uncropped[0]) == pytest.approx(0.10, abs=0.03)
    assert torch.equal(CameraImageTransform(STABLE, DEFAULT_CROP_RATIO)([frame]), out)  # deterministic


def test_training_draw_is_seeded_and_shared_by_cameras():
    frame = _striped_frames(1, 96, 128, 1)[0]
    transform = CameraImageTransform(STABLE, DEFAULT_CROP_RATIO)
    torch.manual_seed(123)
    first = transform([frame, frame, frame], seed=5)
    torch.manual_seed(456)  # the global RNG plays no part
    assert torch.equal(transform([frame, frame, frame], seed=5), first)
    assert not torch.equal(transform([frame, frame, frame], seed=6), first)
    assert torch.equal(first[0], first[1]) and torch.equal(first[1], first[2])
    assert not torch.equal(first, transform([frame] * 3))  # random, not the centre crop


@pytest.fixture(scope="module")
def mixed_resolution_dir(tmp_path_factory) -> Path:
    """One task, three resolutions: 96x128 everywhere, 48x64 everywhere, and smaller wrist cameras than the
    stable one in one episode, one wrist frame smaller than the crop window (20x20 < 0.95 * 48x64)."""
    out = tmp_path_factory.mktemp("mixed_resolution")
    _write(out / "episode_0.hdf5", dict.fromkeys(CAMERAS, (96, 128)), seed=0)
    _write(out / "episode_1.hdf5", dict.fromkeys(CAMERAS, (48, 64)), seed=10)
    _write(
        out / "episode_2.hdf5",
        {"cam_high": (96, 128), "cam_left_wrist": (60, 80), "cam_right_wrist": (20, 20)},
        seed=20,
    )
    return out


def _data_config(augment: bool):
    data_args = type(
        "DataArgs", (), {"image_size_stable": f"({STABLE[0]},{STABLE[1]})", "augment_images": augment,
                         "use_reasoning": False}
    )()
    return {"data_args": data_args}


@pytest.mark.parametrize(
    ("augment", "crop_ratio", "red_rows"),
    # No augmentation: no crop (10% red rows); augmentation: a random 95% window, rotated ±5°, so
    # 5.3%..10.5% red rows, never the 47.5%-of-a-window of a crop sized for another resolution.
    [(False, None, (0.07, 0.13)), (True, DEFAULT_CROP_RATIO, (0.02, 0.14))],
)
def test_mixed_resolutions_in_one_task_are_cropped_alike(mixed_resolution_dir, augment, crop_ratio, red_rows):
    train, *_ = load_data(
        [str(mixed_resolution_dir)], lambda n: True, CAMERAS, 2, 2, 4, config=_data_config(augment),
        policy_class="scale_dp_policy", train_ratio=1.0, rank0_print=lambda *a: None, state_dim=14, action_dim=14,
    )
    assert train.crop_ratio == crop_ratio
    for index in range(len(train)):
        image = train[index]["image"]
        assert image.shape == (3, 3, STABLE[1], STABLE[0]) and image.dtype == torch.uint8
        for camera_image in image:
            assert red_rows[0] <= _red_row_fraction(camera_image) <= red_rows[1], index


def test_validation_split_crops_as_inference(mixed_resolution_dir):
    train, val, *_ = load_data(
        [str(mixed_resolution_dir)], lambda n: True, CAMERAS, 2, 2, 4, config=_data_config(True),
        policy_class="scale_dp_policy", train_ratio=0.5, rank0_print=lambda *a: None, state_dim=14, action_dim=14,
    )
    assert val is not None and not val.augment_images and val.crop_ratio == train.crop_ratio == DEFAULT_CROP_RATIO
    for index in range(len(val)):
        for camera_image in val[index]["image"]:
            # The deterministic centre crop: (0.10 - 0.025) / 0.95 = 7.9% red rows whatever the resolution.
            assert _red_row_fraction(camera_image) == pytest.approx(0.079, abs=0.03)


def _policy_checkpoint(tiny_vla_ckpt: Path, out: Path, crop_ratio: float | None) -> Path:
    """The session's tiny checkpoint, re-labelled as trained at ``STABLE``/``WRIST`` with ``crop_ratio``."""
    ckpt = Path(shutil.copytree(tiny_vla_ckpt, out))
    config = json.loads((ckpt / "config.json").read_text())
    config.update(
        image_size_stable=f"({STABLE[0]},{STABLE[1]})",
        image_size_wrist=f"({WRIST[0]},{WRIST[1]})",
        image_crop_ratio=crop_ratio,
    )
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


def test_training_sample_and_inference_get_identical_pixel_values(tiny_vla_ckpt, mixed_resolution_dir, tmp_path):
    from evaluate.policy import DexVLAPolicy

    policy = DexVLAPolicy(_policy_checkpoint(tiny_vla_ckpt, tmp_path / "ckpt", DEFAULT_CROP_RATIO), max_new_tokens=0)
    path = mixed_resolution_dir / "episode_2.hdf5"  # cameras at three resolutions
    dataset = EpisodicDataset(
        [str(path)], CAMERAS, policy.stats, [0], [episode_length(path)], policy.chunk_size,
        llava_pythia_process=policy.process, augment_images=False, crop_ratio=DEFAULT_CROP_RATIO,
        image_size=STABLE, use_reasoning=False, rank0_print=lambda *a: None,
    )
    raw = dataset.load_raw_step(0, 3)
    frames = list(raw["images"])
    sample = dataset[3]
    served = policy.prompt_features(frames, raw["raw_lang"])
    assert torch.equal(sample["image_grid_thw"], served["image_grid_thw"])
    assert torch.equal(sample["pixel_values"], served["pixel_values"])
    prompt_len = served["input_ids"].shape[0]
    assert torch.equal(sample["input_ids"][:prompt_len], served["input_ids"])
    # Channel-first frames, as some clients send them, are the same observation.
    chw = {cam: np.ascontiguousarray(f.transpose(2, 0, 1)) for cam, f in zip(CAMERAS, frames, strict=True)}
    obs = {"images": chw, "state": np.zeros(14, np.float32), "prompt": raw["raw_lang"]}
    from evaluate.policy import validate_observation

    parsed_frames, _, _ = validate_observation(obs, CAMERAS, 14)
    assert torch.equal(policy.prompt_features(parsed_frames, raw["raw_lang"])["pixel_values"], served["pixel_values"])
    # Without the centre crop (as inference did before) the robot would see another picture than training.
    uncropped = CameraImageTransform(STABLE, None)(frames)
    assert not torch.equal(policy.process.prompt_inputs(uncropped, raw["raw_lang"])["pixel_values"], served["pixel_values"])


def test_checkpoint_without_augmentation_is_not_cropped(tiny_vla_ckpt, tmp_path):
    from evaluate.policy import DexVLAPolicy

    policy = DexVLAPolicy(_policy_checkpoint(tiny_vla_ckpt, tmp_path / "ckpt", None), max_new_tokens=0)
    assert policy.image_transform.crop_ratio is None
    frame = _striped_frames(1, 96, 128, 3)[0]
    assert torch.equal(policy.image_transform([frame]), CameraImageTransform(STABLE, None)([frame]))


def test_trainer_records_the_crop_in_the_checkpoint_config(tiny_model_dir, tmp_path):
    import train_vla
    from tests.test_train_vla import tiny_argv

    for augment, expected in (("True", DEFAULT_CROP_RATIO), ("False", None)):
        _, config = train_vla.parse_config(tiny_argv(tiny_model_dir, tmp_path, augment_images=augment))
        assert config.image_crop_ratio == expected
