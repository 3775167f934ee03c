"""Self-contained tiny DexVLA checkpoints for the evaluation tests (and anyone trying the evaluation offline).

:func:`build_tiny_checkpoint` writes what the trainer writes (``config.json`` with the training image
sizes, weights, processor and tokenizer files, ``dataset_stats.json``) for a freshly initialised VLA on
the tiny offline Qwen2-VL. :func:`overfit_checkpoint` trains such a checkpoint on a single episode with a
plain torch loop (the same processor, dataset and collator as training), so that replaying that episode
has something to show.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from data_utils.hdf5_io import find_all_hdf5
from data_utils.normalization import STATS_FILE_NAME, NormStats


def build_tiny_checkpoint(
    out_dir: str | os.PathLike,
    base_model_dir: str | os.PathLike,
    episodes_dir: str | os.PathLike,
    camera_names: Sequence[str],
    chunk_size: int = 8,
    image_size: tuple[int, int] = (56, 56),
    seed: int = 0,
    policy_head_size: str = "ScaleDP_tiny",
) -> Path:
    """A freshly initialised VLA on ``base_model_dir`` (a stock tiny Qwen2-VL) with statistics of ``episodes_dir``.

    ``image_size``: ``(width, height)`` for every camera; ``chunk_size``: the head's prediction horizon.
    """
    from transformers import AutoConfig, AutoProcessor

    import qwen2_vla  # noqa: F401
    from data_utils.utils import get_norm_stats
    from policy_heads import build_policy_head_config
    from qwen2_vla import Qwen2VLAConfig, Qwen2VLAForConditionalGeneration

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
    size = f"({image_size[0]},{image_size[1]})"
    config = Qwen2VLAConfig.from_qwen2_vl_config(base, head, image_size_stable=size, image_size_wrist=size)
    torch.manual_seed(seed)
    model = Qwen2VLAForConditionalGeneration.from_pretrained(base_model_dir, config=config)
    model.save_pretrained(out_dir)
    AutoProcessor.from_pretrained(base_model_dir).save_pretrained(out_dir)
    stats.save(out_dir)
    return out_dir


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
    pre-process and normalise alike.
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
    )
    features = [dataset[i] for i in range(len(dataset))]
    collator = Qwen2VLADataCollatorForSupervisedDataset(processor, None, tokenizer)

    torch.manual_seed(seed)
    model = from_pretrained_vla(ckpt_dir)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for step in range(steps):
        batch = collator([features[i] for i in rng.choice(len(features), size=batch_size, replace=True)])
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(f"overfit step {step}: loss {loss.item():.4f} ({time.perf_counter() - start:.1f} s)")
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    shutil.copy(ckpt_dir / STATS_FILE_NAME, out_dir / STATS_FILE_NAME)
    return out_dir


__all__ = ["build_tiny_checkpoint", "overfit_checkpoint"]
