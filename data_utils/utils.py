"""Dataset assembly: find episodes, compute statistics, split, and build the datasets (reference API)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import h5py
import numpy as np

from data_utils.check_data_integrity import DataIntegrityError, check_episodes
from data_utils.dataset import EpisodicDataset, SampleProcessor, episode_action_deltas
from data_utils.hdf5_io import ACTION_KEY, QPOS_KEY, find_all_hdf5
from data_utils.normalization import MINMAX_MARGIN, STD_FLOOR, NormStats, RunningStats

__all__ = ["find_all_hdf5", "get_norm_stats", "load_data", "flatten_list"]


def flatten_list(nested: Sequence[Sequence[Any]]) -> list[Any]:
    return [item for sub in nested for item in sub]


def get_norm_stats(
    dataset_path_list: Sequence[str],
    delta_control: bool = False,
    camera_names: Sequence[str] = (),
    chunk_size: int | None = None,
    dataset_dirs: Sequence[str] = (),
) -> tuple[NormStats, list[int]]:
    """Statistics of ``qpos`` and actions over all episodes, streamed one episode at a time.

    With ``delta_control`` the action statistics are those of the deltas the model trains on.
    Returns the stats and each episode's length.
    """
    action_stats, qpos_stats = RunningStats(), RunningStats()
    lengths: list[int] = []
    for path in dataset_path_list:
        with h5py.File(path, "r") as root:
            action = root[ACTION_KEY][()].astype(np.float64)
            qpos = root[QPOS_KEY][()].astype(np.float64)
        action_stats.update(episode_action_deltas(action) if delta_control else action)
        qpos_stats.update(qpos)
        lengths.append(len(action))
    if not lengths:
        raise ValueError("get_norm_stats: no episodes given")
    stats = NormStats(
        action_mean=action_stats.mean,
        action_std=np.clip(action_stats.std, STD_FLOOR, np.inf),
        action_min=action_stats.min - MINMAX_MARGIN,
        action_max=action_stats.max + MINMAX_MARGIN,
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

    ``config`` is the training script's ``all_config``; from its ``data_args`` this reads
    ``delta_control``, ``episode_first``, ``use_reasoning`` and ``augment_images`` when present.

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

    path_lists = [find_all_hdf5(d, skip_mirrored_data, name_filter) for d in dataset_dir_l]
    num_episodes_l = [len(paths) for paths in path_lists]
    dataset_path_list = flatten_list(path_lists)
    stats_path_list = (
        dataset_path_list
        if stats_dir_l is None
        else flatten_list([find_all_hdf5(d, skip_mirrored_data, name_filter) for d in stats_dir_l])
    )

    problems = check_episodes(
        sorted(set(dataset_path_list) | set(stats_path_list)),
        camera_names,
        state_dim,
        action_dim,
        check_images=False,
        require_reasoning=use_reasoning and llava_pythia_process is not None,
    )
    if problems:
        raise DataIntegrityError(problems)

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
        all_episode_len = []
        for path in dataset_path_list:
            with h5py.File(path, "r") as root:
                all_episode_len.append(int(root[ACTION_KEY].shape[0]))

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
