"""Dataset assembly: find episodes, compute statistics, split, and build the datasets (reference API)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from data_utils.check_data_integrity import (
    DataIntegrityError,
    check_episodes,
    episodes_without_reasoning,
    reasoning_warning,
)
from data_utils.dataset import EpisodicDataset, SampleProcessor, chunk_start, training_crop_ratio
from data_utils.episode_source import episode_length, find_episodes, open_episode
from data_utils.hdf5_io import ACTION_KEY, QPOS_KEY, find_all_hdf5
from data_utils.normalization import STD_FLOOR, NormStats, RunningStats, minmax_bounds

__all__ = ["episode_delta_counts", "find_all_hdf5", "get_norm_stats", "load_data", "flatten_list"]


def flatten_list(nested: Sequence[Sequence[Any]]) -> list[Any]:
    return [item for sub in nested for item in sub]


def episode_delta_counts(
    action: np.ndarray, qpos: np.ndarray, is_sim: bool, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every delta ``delta_control`` training draws from one episode, and how often: ``(rows (2T-1, A), counts)``.

    Training's chunk for frame ``t`` (``s = chunk_start(t)``, see ``chunk_action_deltas``) holds
    ``action[s] - qpos[t]`` (rows ``0..T-1``, once each) and the steps ``action[j] - action[j-1]`` for
    ``s < j < min(s + chunk_size, T)`` (rows ``T..2T-2`` for ``j = 1..T-1``); a step is counted once for
    every chunk holding it, so the statistics weigh each value as training does. ``O(T)``.
    """
    length = len(action)
    starts = np.array([chunk_start(t, is_sim) for t in range(length)], dtype=np.int64)
    firsts = action[starts] - qpos
    # Chunks holding step j (as a later entry) are those with start in [j - chunk_size + 1, j - 1].
    starts_below = np.concatenate([[0], np.cumsum(np.bincount(starts, minlength=length))])  # [i]: #starts < i
    j = np.arange(1, length)
    step_counts = starts_below[j] - starts_below[np.maximum(j - chunk_size + 1, 0)]
    rows = np.concatenate([firsts, np.diff(action, axis=0)])
    return rows, np.concatenate([np.ones(length, dtype=np.int64), step_counts])


def get_norm_stats(
    dataset_path_list: Sequence[str],
    delta_control: bool = False,
    camera_names: Sequence[str] = (),
    chunk_size: int | None = None,
    dataset_dirs: Sequence[str] = (),
) -> tuple[NormStats, list[int]]:
    """Statistics of ``qpos`` and actions over all episodes, streamed one episode at a time (float64).

    With ``delta_control`` the action statistics are those of exactly the deltas the model trains on
    (:func:`episode_delta_counts`; they depend on ``chunk_size``, which is then required).
    Returns the stats and each episode's length.
    """
    if delta_control and (chunk_size is None or chunk_size <= 0):
        raise ValueError(f"get_norm_stats: delta_control statistics depend on the chunk size; got chunk_size={chunk_size}")
    action_stats, qpos_stats = RunningStats(), RunningStats()
    lengths: list[int] = []
    for path in dataset_path_list:
        with open_episode(path) as episode:
            action = np.asarray(episode.action(), dtype=np.float64)
            qpos = np.asarray(episode.qpos(), dtype=np.float64)
            is_sim = episode.is_sim
        if delta_control:
            if action.shape[1:] != qpos.shape[1:]:
                raise ValueError(
                    f"{path}: delta_control takes actions relative to '{QPOS_KEY}', so '{ACTION_KEY}' "
                    f"{action.shape} and '{QPOS_KEY}' {qpos.shape} must have one width (action_dim == state_dim)"
                )
            # The dataset takes the first delta from the float32 state (what deployment measures).
            action_stats.update(*episode_delta_counts(action, qpos.astype(np.float32), is_sim, int(chunk_size)))
        else:
            action_stats.update(action)
        qpos_stats.update(qpos)
        lengths.append(len(action))
    if not lengths:
        raise ValueError("get_norm_stats: no episodes given")
    action_min, action_max = minmax_bounds(action_stats.min, action_stats.max)
    stats = NormStats(
        action_mean=action_stats.mean,
        action_std=np.clip(action_stats.std, STD_FLOOR, np.inf),
        action_min=action_min,
        action_max=action_max,
        qpos_mean=qpos_stats.mean,
        qpos_std=np.clip(qpos_stats.std, STD_FLOOR, np.inf),
        camera_names=list(camera_names),
        chunk_size=chunk_size,
        delta_control=delta_control,
        dataset_dirs=list(dataset_dirs),
        num_episodes=len(lengths),
        num_steps=int(sum(lengths)),
    )
    return stats, lengths


def _data_arg(config: dict[str, Any] | None, name: str, default: Any) -> Any:
    data_args = (config or {}).get("data_args")
    return getattr(data_args, name, default) if data_args is not None else default


def load_data(
    dataset_dir_l: Sequence[str],
    name_filter: Callable[[str], bool] | None,
    camera_names: Sequence[str],
    batch_size_train: int,
    batch_size_val: int,
    chunk_size: int,
    config: dict[str, Any] | None = None,
    rank0_print: Callable[..., None] = print,
    skip_mirrored_data: bool = False,
    policy_class: str | None = None,
    stats_dir_l: Sequence[str] | None = None,
    sample_weights: Sequence[float] | None = None,
    train_ratio: float = 0.99,
    llava_pythia_process: SampleProcessor | None = None,
    seed: int = 0,
    state_dim: int | None = None,
    action_dim: int | None = None,
) -> tuple[EpisodicDataset, EpisodicDataset | None, NormStats, dict[str, dict[str, Any]]]:
    """Build train/val ``EpisodicDataset``s over ``dataset_dir_l`` (reference signature).

    The first directory is the main dataset, split by ``train_ratio`` after a seeded shuffle; the
    others go to training in full. Every episode is checked (shapes, keys, finite numbers, cameras)
    before anything is built, and all problems are raised together as a ``DataIntegrityError``.
    Episodes without any reasoning annotation are not a problem: under ``use_reasoning`` (with a
    processor) one warning through ``rank0_print`` names them, and their samples are answered
    without reasoning.

    ``config`` is the training script's ``all_config``; from its ``data_args`` this reads
    ``delta_control``, ``episode_first``, ``use_reasoning``, ``augment_images`` and ``image_size_stable``
    (every camera's frame is resized to it first) when present.

    Returns ``(train_dataset, val_dataset or None, norm_stats, sampler_params)``.
    """
    if isinstance(dataset_dir_l, str):
        dataset_dir_l = [dataset_dir_l]
    if not dataset_dir_l:
        raise ValueError("load_data: dataset_dir_l is empty")
    delta_control = bool(_data_arg(config, "delta_control", False))
    episode_first = bool(_data_arg(config, "episode_first", False))
    use_reasoning = bool(_data_arg(config, "use_reasoning", True))
    augment_images = _data_arg(config, "augment_images", None)
    image_size = _data_arg(config, "image_size_stable", None)
    crop_ratio = training_crop_ratio(augment_images, policy_class)

    # HDF5 directories and LeRobot roots alike (data_utils.episode_source).
    path_lists = [find_episodes(d, skip_mirrored_data, name_filter) for d in dataset_dir_l]
    num_episodes_l = [len(paths) for paths in path_lists]
    dataset_path_list = flatten_list(path_lists)
    stats_path_list = (
        dataset_path_list
        if stats_dir_l is None
        else flatten_list([find_episodes(d, skip_mirrored_data, name_filter) for d in stats_dir_l])
    )

    # Before the first step: shapes, finite values, one decoded frame per compressed camera; without an
    # image size to resize to, a sample stacks its cameras' frames, so they must share one resolution.
    problems = check_episodes(
        sorted(set(dataset_path_list) | set(stats_path_list)),
        camera_names,
        state_dim,
        action_dim,
        check_images=False,
        one_resolution=image_size is None,
    )
    if problems:
        raise DataIntegrityError(problems)
    if use_reasoning and llava_pythia_process is not None:
        # Their samples carry reasoning=None and are answered without reasoning; say so once, here.
        missing = episodes_without_reasoning(dataset_path_list)
        if missing:
            rank0_print(reasoning_warning(missing, len(dataset_path_list)))

    norm_stats, stats_lengths = get_norm_stats(
        stats_path_list,
        delta_control=delta_control,
        camera_names=camera_names,
        chunk_size=chunk_size,
        dataset_dirs=[str(d) for d in dataset_dir_l],
    )
    if stats_dir_l is None:
        all_episode_len = stats_lengths
    else:
        all_episode_len = [episode_length(ref) for ref in dataset_path_list]

    # Split the main dataset; the others are training data in full.
    rng = np.random.default_rng(seed)
    num_main = num_episodes_l[0]
    shuffled = rng.permutation(num_main)
    num_train_main = min(num_main, max(1, int(train_ratio * num_main)))
    offsets = np.concatenate([[0], np.cumsum(num_episodes_l)[:-1]]).astype(int)
    train_ids_l = [shuffled[:num_train_main].tolist()] + [
        list(range(offsets[i], offsets[i] + n)) for i, n in enumerate(num_episodes_l) if i > 0
    ]
    val_ids = shuffled[num_train_main:].tolist()
    train_ids = flatten_list(train_ids_l)
    train_len_l = [[all_episode_len[i] for i in ids] for ids in train_ids_l]

    rank0_print(
        f"load_data: {len(dataset_path_list)} episodes in {len(dataset_dir_l)} dir(s); "
        f"train {len(train_ids)}, val {len(val_ids)}; stats over {len(stats_path_list)} episodes"
    )
    common = dict(
        dataset_path_list=dataset_path_list,
        camera_names=camera_names,
        norm_stats=norm_stats,
        chunk_size=chunk_size,
        policy_class=policy_class,
        llava_pythia_process=llava_pythia_process,
        delta_control=delta_control,
        use_reasoning=use_reasoning,
        rank0_print=rank0_print,
        seed=seed,
        image_size=image_size,
        # Validation crops deterministically, as inference does: the same crop ratio, no random draw.
        crop_ratio=crop_ratio,
    )
    train_dataset = EpisodicDataset(
        episode_ids=train_ids,
        episode_len=flatten_list(train_len_l),
        augment_images=augment_images,
        **common,
    )
    val_dataset = None
    if val_ids:
        # No augmentation when validating.
        val_dataset = EpisodicDataset(
            episode_ids=val_ids, episode_len=[all_episode_len[i] for i in val_ids], augment_images=False, **common
        )
    sampler_params = {
        "train": {
            "batch_size": batch_size_train,
            "episode_len_l": train_len_l,
            "sample_weights": sample_weights,
            "episode_first": episode_first,
        },
        "eval": {
            "batch_size": batch_size_val,
            "episode_len_l": [[all_episode_len[i] for i in val_ids]] if val_ids else [],
            "sample_weights": None,
            "episode_first": episode_first,
        },
    }
    return train_dataset, val_dataset, norm_stats, sampler_params
