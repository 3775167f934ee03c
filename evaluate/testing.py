"""Self-contained tiny DexVLA checkpoints for the evaluation tests (and anyone trying the evaluation offline).

:func:`build_tiny_checkpoint` writes what the trainer writes (``config.json`` with the training image
sizes, weights, processor and tokenizer files, ``dataset_stats.json``) for a freshly initialised VLA on
the tiny offline Qwen2-VL. Its head is not at its adaLN-Zero start (see ``head_init_std``): an untrained head
whose output layers are zero samples actions from the DDIM noise alone, so a test on it could not tell
whether the policy reads its images, state and prompt. :func:`overfit_checkpoint` trains such a checkpoint
on a single episode with a plain torch loop (the same processor, dataset and collator as training), so
that replaying that episode has something to show.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from data_utils.hdf5_io import find_all_hdf5
from data_utils.normalization import STATS_FILE_NAME, NormStats

OVERFIT_LOG_NAME = "overfit_log.json"


def build_tiny_checkpoint(
    out_dir: str | os.PathLike,
    base_model_dir: str | os.PathLike,
    episodes_dir: str | os.PathLike,
    camera_names: Sequence[str],
    chunk_size: int = 8,
    image_size: tuple[int, int] = (56, 56),
    seed: int = 0,
    policy_head_size: str = "ScaleDP_tiny",
    image_size_wrist: tuple[int, int] | None = None,
    pixel_budget: tuple[int, int] | None = None,
    head_init_std: float | None = 0.1,
) -> Path:
    """A freshly initialised VLA on ``base_model_dir`` (a stock tiny Qwen2-VL, Qwen2.5-VL or Qwen3-VL) with statistics of ``episodes_dir``.

    Args:
        image_size: ``(width, height)`` of the stable cameras (and of the wrist cameras unless
            ``image_size_wrist`` is given), written to the config as training writes it.
        chunk_size: the head's prediction horizon.
        pixel_budget: ``(min_pixels, max_pixels)`` of the saved image processor instead of the base
            model's (e.g. Qwen2-VL-2B's real budget, under which a 320x240 frame is 99 image tokens).
        head_init_std: parameters of the policy head and the fusion that start at exactly zero
            (adaLN-Zero modulations, the head's output layer, FiLM, zero biases) are drawn from
            ``N(0, head_init_std)`` instead, seeded by ``seed``, so the sampled actions depend on the
            images, state and prompt. ``None`` keeps the zero start training begins from.
    """
    from transformers import AutoConfig, AutoProcessor

    import qwen2_vla  # noqa: F401
    from data_utils.utils import get_norm_stats
    from policy_heads import build_policy_head_config
    from qwen2_vla import vla_config_from_vlm, vla_model_class

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats, _ = get_norm_stats(
        find_all_hdf5(episodes_dir), camera_names=list(camera_names), chunk_size=chunk_size,
        dataset_dirs=[str(episodes_dir)],
    )
    base = AutoConfig.from_pretrained(base_model_dir)
    head = build_policy_head_config(
        "scale_dp_policy", base.text_config.hidden_size, stats.state_dim, stats.action_dim, chunk_size, policy_head_size
    )
    wrist = image_size if image_size_wrist is None else image_size_wrist
    config = vla_config_from_vlm(
        base, head, image_size_stable=f"({image_size[0]},{image_size[1]})", image_size_wrist=f"({wrist[0]},{wrist[1]})"
    )
    torch.manual_seed(seed)
    model = vla_model_class(config).from_pretrained(base_model_dir, config=config)
    if head_init_std is not None:
        _leave_zero_start(model, head_init_std, seed)
    model.save_pretrained(out_dir)
    size_kwargs = {} if pixel_budget is None else {"size": {"shortest_edge": pixel_budget[0], "longest_edge": pixel_budget[1]}}
    AutoProcessor.from_pretrained(base_model_dir, **size_kwargs).save_pretrained(out_dir)
    stats.save(out_dir)
    return out_dir


def _leave_zero_start(model: torch.nn.Module, std: float, seed: int) -> None:
    """Redraw the head's and the fusion's all-zero parameters from ``N(0, std)`` (a generator seeded by ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    modules = [m for m in (model.policy_head, getattr(model, "fusion", None)) if m is not None]
    with torch.no_grad():
        for module in modules:
            for param in module.parameters():
                if param.is_floating_point() and not param.any():
                    draw = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
                    param.copy_(draw.to(param.dtype))


def overfit_checkpoint(
    ckpt_dir: str | os.PathLike,
    episode_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    steps: int = 300,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train ``ckpt_dir`` on every step of one episode for ``steps`` updates; save a checkpoint to ``out_dir``.

    The statistics are copied from ``ckpt_dir`` (the image sizes travel in the config), so both checkpoints
    pre-process and normalise alike. The per-step ``loss``, ``action_loss`` and ``llm_loss`` are written to
    ``out_dir/overfit_log.json`` (:data:`OVERFIT_LOG_NAME`, read back with :func:`read_overfit_log`).
    """
    from transformers import AutoProcessor, AutoTokenizer

    from data_utils.data_collator import Qwen2VLADataCollatorForSupervisedDataset
    from data_utils.dataset import EpisodicDataset
    from data_utils.hdf5_io import episode_length
    from evaluate.inference_config import load_inference_config
    from qwen2_vla.model_load_utils import from_pretrained_vla
    from qwen2_vla.robot_data_processor import Qwen2VLAProcess

    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    stats = NormStats.load(ckpt_dir)
    sizes = load_inference_config(ckpt_dir)
    tokenizer = AutoTokenizer.from_pretrained(ckpt_dir)
    processor = AutoProcessor.from_pretrained(ckpt_dir)
    data_args = type("DataArgs", (), {"image_size_stable": sizes.image_size_stable,
                                      "image_size_wrist": sizes.image_size_wrist})()
    process = Qwen2VLAProcess(tokenizer, processor, data_args, stats.camera_names)
    length = episode_length(episode_path)
    dataset = EpisodicDataset(
        [str(episode_path)], stats.camera_names, stats, [0], [length], int(stats.chunk_size),
        llava_pythia_process=process, augment_images=False, rank0_print=lambda *a: None,
        # Pre-processed exactly as DexVLAPolicy will serve it (resize first, the checkpoint's crop).
        image_size=sizes.image_size_stable, crop_ratio=sizes.image_crop_ratio,
    )
    features = [dataset[i] for i in range(len(dataset))]
    collator = Qwen2VLADataCollatorForSupervisedDataset(processor, None, tokenizer)

    torch.manual_seed(seed)
    model = from_pretrained_vla(ckpt_dir)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    # Cosine decay to zero: the last steps settle instead of ending wherever the last noisy batch left them.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    history: dict[str, list[float]] = {"loss": [], "action_loss": [], "llm_loss": []}
    for step in range(steps):
        batch = collator([features[i] for i in rng.choice(len(features), size=batch_size, replace=True)])
        out = model(**batch)
        loss = out.loss
        for key in history:
            history[key].append(getattr(out, key).item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(f"overfit step {step}: loss {loss.item():.4f} ({time.perf_counter() - start:.1f} s)")
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    shutil.copy(ckpt_dir / STATS_FILE_NAME, out_dir / STATS_FILE_NAME)
    (out_dir / OVERFIT_LOG_NAME).write_text(json.dumps(history))
    return out_dir


def episode_chunks(stats: NormStats, episode_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The target chunk of every frame of one episode, as training pairs them.

    Returns ``actions (T, chunk, action_dim)`` normalised by ``stats`` and ``valid (T, chunk)`` (false on padding).
    """
    from data_utils.dataset import EpisodicDataset
    from data_utils.hdf5_io import episode_length

    dataset = EpisodicDataset(
        [str(episode_path)], stats.camera_names, stats, [0], [episode_length(episode_path)], int(stats.chunk_size),
        augment_images=False, rank0_print=lambda *a: None,
    )
    samples = [dataset[i] for i in range(len(dataset))]
    actions = np.stack([s["action"].numpy() for s in samples])
    valid = ~np.stack([s["is_pad"].numpy() for s in samples])
    return actions, valid


def mean_chunk(actions: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(chunk, action_dim)``: the mean of :func:`episode_chunks`' targets over their real steps.

    The least-squares best chunk of every predictor that ignores its inputs: the baseline a policy
    that sees its observations must beat.
    """
    return (actions * valid[..., None]).sum(0) / valid.sum(0)[:, None]


def read_overfit_log(ckpt_dir: str | os.PathLike) -> dict[str, list[float]]:
    """The per-step losses :func:`overfit_checkpoint` recorded: ``{"loss"|"action_loss"|"llm_loss": [steps]}``."""
    return json.loads((Path(ckpt_dir) / OVERFIT_LOG_NAME).read_text())


__all__ = [
    "OVERFIT_LOG_NAME",
    "build_tiny_checkpoint",
    "episode_chunks",
    "mean_chunk",
    "overfit_checkpoint",
    "read_overfit_log",
]
