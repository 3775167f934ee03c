"""Dataset assembly: find episodes, compute statistics, split, and build the datasets (reference API)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from data_utils.check_data_integrity import (
    DataIntegrityError,
    check_episodes,
    episodes_without_reasoning,
    reasoning_warning,
)
from data_utils.dataset import (
    EmbodimentConcatDataset,
    EpisodicDataset,
    SampleProcessor,
    chunk_start,
    training_crop_ratio,
)
from data_utils.episode_source import configure_lerobot_features, episode_length, find_episodes, open_episode
from data_utils.hdf5_io import ACTION_KEY, QPOS_KEY, find_all_hdf5
from data_utils.lerobot_io import is_lerobot_root
from data_utils.normalization import (
    ACTION_NORMALIZATIONS,
    QUANTILE_EXACT_MAX_ROWS,
    QUANTILE_HIGH,
    QUANTILE_LOW,
    QUANTILE_SEED,
    STATE_NORMALIZATIONS,
    STATS_SOURCES,
    STD_FLOOR,
    EmbodimentStats,
    NormStats,
    RunningQuantiles,
    RunningStats,
    minmax_bounds,
    quantile_bounds,
)

__all__ = [
    "episode_delta_counts",
    "find_all_hdf5",
    "flatten_list",
    "get_meta_norm_stats",
    "get_norm_stats",
    "load_data",
    "load_embodiment_data",
]


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
    action_normalization: str = "minmax",
    state_normalization: str = "zscore",
    quantile_max_rows: int = QUANTILE_EXACT_MAX_ROWS,
    quantile_seed: int = QUANTILE_SEED,
) -> tuple[NormStats, list[int]]:
    """Statistics of ``qpos`` and actions over all episodes, streamed one episode at a time (float64).

    With ``delta_control`` the action statistics are those of exactly the deltas the model trains on
    (:func:`episode_delta_counts`; they depend on ``chunk_size``, which is then required).
    ``action_normalization="quantile"`` / ``state_normalization="quantile"`` add the 1st/99th
    percentiles (:class:`~data_utils.normalization.RunningQuantiles`: exact up to ``quantile_max_rows``
    rows -- 2,000,000 by default, counted as distinct delta rows under ``delta_control`` -- beyond that
    from a uniform subsample seeded by ``quantile_seed``; delta rows weighted by how often training
    draws them); they are computed only for a quantile mode. Returns the stats and each episode's length.
    """
    if delta_control and (chunk_size is None or chunk_size <= 0):
        raise ValueError(f"get_norm_stats: delta_control statistics depend on the chunk size; got chunk_size={chunk_size}")
    _check_modes(action_normalization, state_normalization)
    action_stats, qpos_stats = RunningStats(), RunningStats()
    action_q = RunningQuantiles(quantile_max_rows, quantile_seed) if action_normalization == "quantile" else None
    qpos_q = RunningQuantiles(quantile_max_rows, quantile_seed) if state_normalization == "quantile" else None
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
            rows, counts = episode_delta_counts(action, qpos.astype(np.float32), is_sim, int(chunk_size))
        else:
            rows, counts = action, None
        action_stats.update(rows, counts)
        qpos_stats.update(qpos)
        if action_q is not None:
            action_q.update(rows, counts)
        if qpos_q is not None:
            qpos_q.update(qpos)
        lengths.append(len(action))
    if not lengths:
        raise ValueError("get_norm_stats: no episodes given")
    moments = []
    for running, accumulator in ((action_stats, action_q), (qpos_stats, qpos_q)):
        summary = {"mean": running.mean, "std": running.std, "min": running.min, "max": running.max}
        if accumulator is not None:
            summary["q01"], summary["q99"] = accumulator.quantiles((QUANTILE_LOW, QUANTILE_HIGH))
        moments.append(summary)
    stats = _norm_stats_from(
        *moments,
        camera_names=list(camera_names),
        chunk_size=chunk_size,
        delta_control=delta_control,
        dataset_dirs=list(dataset_dirs),
        num_episodes=len(lengths),
        num_steps=int(sum(lengths)),
        action_normalization=action_normalization,
        state_normalization=state_normalization,
    )
    return stats, lengths


def _norm_stats_from(action: dict[str, np.ndarray], state: dict[str, np.ndarray], **fields: Any) -> NormStats:
    """``NormStats`` from per-dimension ``mean``/``std``/``min``/``max`` (and optional ``q01``/``q99``) of the
    actions and the states, with the rules every source shares: std floored at ``STD_FLOOR``, min-max bounds
    kept apart (``minmax_bounds``), degenerate quantiles replaced (``quantile_bounds``)."""
    action_min, action_max = minmax_bounds(action["min"], action["max"])
    quantiles: dict[str, np.ndarray] = {}
    for prefix, summary in (("action", action), ("qpos", state)):
        if "q01" in summary:
            quantiles[f"{prefix}_q01"], quantiles[f"{prefix}_q99"] = quantile_bounds(
                summary["q01"], summary["q99"], summary["min"], summary["max"]
            )
    return NormStats(
        action_mean=action["mean"],
        action_std=np.clip(action["std"], STD_FLOOR, np.inf),
        action_min=action_min,
        action_max=action_max,
        qpos_mean=state["mean"],
        qpos_std=np.clip(state["std"], STD_FLOOR, np.inf),
        **quantiles,
        **fields,
    )


def _check_modes(action_normalization: str, state_normalization: str) -> None:
    if action_normalization not in ACTION_NORMALIZATIONS:
        raise ValueError(f"action_normalization must be one of {list(ACTION_NORMALIZATIONS)}, got {action_normalization!r}")
    if state_normalization not in STATE_NORMALIZATIONS:
        raise ValueError(f"state_normalization must be one of {list(STATE_NORMALIZATIONS)}, got {state_normalization!r}")


def _meta_feature_stats(root: Any, key: str, width: int, names: Sequence[str]) -> dict[str, np.ndarray]:
    """``{stat: (width,) float64}`` of feature ``key`` in ``root``'s ``meta/stats.json``, plus ``count``."""
    path = root.root / "meta" / "stats.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; --norm_stats_source dataset_meta reads it (use data instead)")
    stats = root.read_stats()
    if key not in stats:
        raise KeyError(f"{path}: no statistics of feature '{key}' (features there: {sorted(stats)})")
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name not in stats[key]:
            hint = " (LeRobot's augment_dataset_quantile_stats.py adds them)" if name.startswith("q") else ""
            raise KeyError(f"{path}: feature '{key}' has no '{name}' statistic{hint}; or use --norm_stats_source data")
        value = np.asarray(stats[key][name], dtype=np.float64).reshape(-1)
        if value.shape != (width,):
            raise ValueError(f"{path}: '{key}' statistic '{name}' has shape {value.shape}, expected ({width},)")
        if not np.isfinite(value).all():
            raise ValueError(f"{path}: '{key}' statistic '{name}' has non-finite values: {value}")
        out[name] = value
    count = np.asarray(stats[key].get("count", [root.total_frames]), dtype=np.float64).reshape(-1)
    if count.shape != (1,) or not count[0] > 0:
        raise ValueError(f"{path}: '{key}' statistic 'count' must be one positive number, got {count}")
    out["count"] = count
    return out


def _combine_meta_stats(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One root's statistics from several, by LeRobot's own rule (``aggregate_feature_stats``).

    Means weighted by frame counts, the (population) variance by the parallel formula: both exact.
    ``min``/``max``: min of mins, max of maxes (exact). Quantiles: the frame-weighted average of each
    root's quantiles -- an approximation (the 1st percentile of a union is not the average of the 1st
    percentiles), and ``meta/stats.json``'s own quantiles are already such averages over episodes.
    """
    counts = np.array([p["count"][0] for p in parts])
    weights = counts / counts.sum()
    mean = sum(w * p["mean"] for w, p in zip(weights, parts, strict=True))
    out = {"mean": mean, "count": np.array([counts.sum()])}
    if "std" in parts[0]:
        spread = (w * (np.square(p["std"]) + np.square(p["mean"] - mean)) for w, p in zip(weights, parts, strict=True))
        out["std"] = np.sqrt(sum(spread))
    if "min" in parts[0]:
        out["min"] = np.min([p["min"] for p in parts], axis=0)
        out["max"] = np.max([p["max"] for p in parts], axis=0)
    for name in ("q01", "q99"):
        if name in parts[0]:
            out[name] = sum(w * p[name] for w, p in zip(weights, parts, strict=True))
    return out


def get_meta_norm_stats(
    stats_dirs: Sequence[str],
    dataset_path_list: Sequence[str],
    delta_control: bool = False,
    camera_names: Sequence[str] = (),
    chunk_size: int | None = None,
    dataset_dirs: Sequence[str] = (),
    action_normalization: str = "minmax",
    state_normalization: str = "zscore",
) -> tuple[NormStats, list[int]]:
    """Statistics read from the ``meta/stats.json`` of LeRobot roots ``stats_dirs`` (``--norm_stats_source dataset_meta``).

    Every directory must be a LeRobot root (else a ``ValueError`` naming it). The root's configured state
    and action features are read; with several roots their statistics are combined by LeRobot's rule
    (:func:`_combine_meta_stats`: exact means/stds/min/max, frame-weighted averages of quantiles, which
    approximate). As in our pass, the stds are floored at ``STD_FLOOR`` and min/max widened by the
    margin; LeRobot's std is the population std (ours: unbiased; they differ by ``sqrt(N / (N - 1))``).
    ``meta/stats.json`` covers each whole root: a task's ``name_filter`` does not change it.
    ``delta_control`` is refused: the file describes absolute actions, not the deltas trained on.
    Returns the stats and the length of each episode of ``dataset_path_list``.
    """
    from data_utils.episode_source import lerobot_root  # the per-process roots, with the task's feature keys
    from data_utils.lerobot_io import is_lerobot_root

    _check_modes(action_normalization, state_normalization)
    if delta_control:
        raise ValueError(
            "norm_stats_source='dataset_meta' cannot be used with delta_control=True: meta/stats.json holds "
            "statistics of absolute actions, not of the deltas trained on; use --norm_stats_source data"
        )
    if not stats_dirs:
        raise ValueError("get_meta_norm_stats: no dataset directories given")
    for directory in stats_dirs:
        if not is_lerobot_root(directory):
            raise ValueError(
                f"norm_stats_source='dataset_meta' reads LeRobot meta/stats.json, but {directory} is not a LeRobot "
                "dataset root (no meta/info.json); use --norm_stats_source data for HDF5 directories"
            )
    action_names = ("mean", "std", "min", "max") + (("q01", "q99") if action_normalization == "quantile" else ())
    state_names = ("mean", "std", "min", "max") + (("q01", "q99") if state_normalization == "quantile" else ())
    action_parts, state_parts = [], []
    for directory in stats_dirs:
        root = lerobot_root(directory)
        action_parts.append(_meta_feature_stats(root, root.action_key, root.action_dim, action_names))
        state_parts.append(_meta_feature_stats(root, root.state_key, root.state_dim, state_names))
    widths = {(p["mean"].shape[0], q["mean"].shape[0]) for p, q in zip(action_parts, state_parts, strict=True)}
    if len(widths) != 1:
        raise ValueError(
            f"norm_stats_source='dataset_meta': roots {list(stats_dirs)} have different (action, state) widths "
            f"{sorted(widths)}"
        )
    lengths = [episode_length(ref) for ref in dataset_path_list]
    stats = _norm_stats_from(
        _combine_meta_stats(action_parts),
        _combine_meta_stats(state_parts),
        camera_names=list(camera_names),
        chunk_size=chunk_size,
        delta_control=False,
        dataset_dirs=list(dataset_dirs),
        num_episodes=len(lengths),
        num_steps=int(sum(lengths)),
        action_normalization=action_normalization,
        state_normalization=state_normalization,
        stats_source="dataset_meta",
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
    lerobot_features: dict[str, str] | None = None,
    norm_stats: NormStats | None = None,
    pad_to: tuple[int, int] | None = None,
) -> tuple[EpisodicDataset, EpisodicDataset | None, NormStats, dict[str, dict[str, Any]]]:
    """Build train/val ``EpisodicDataset``s over ``dataset_dir_l`` (reference signature).

    The first directory is the main dataset, split by ``train_ratio`` after a seeded shuffle; the
    others go to training in full. Every episode is checked (shapes, keys, finite numbers, cameras)
    before anything is built, and all problems are raised together as a ``DataIntegrityError``.
    Episodes without any reasoning annotation are not a problem: under ``use_reasoning`` (with a
    processor) one warning through ``rank0_print`` names them, and their samples are answered
    without reasoning.

    ``config`` is the training script's ``all_config``; from its ``data_args`` this reads
    ``delta_control``, ``episode_first``, ``use_reasoning``, ``augment_images``, ``image_size_stable``
    (every camera's frame is resized to it first), ``action_normalization``, ``state_normalization`` and
    ``norm_stats_source`` (``"data"``: :func:`get_norm_stats` over the statistics episodes;
    ``"dataset_meta"``: :func:`get_meta_norm_stats` of the statistics directories) when present.

    ``norm_stats``: use these statistics instead of computing them (an embodiment whose statistics span
    several tasks, :func:`load_embodiment_data`); ``pad_to``: see ``EpisodicDataset``.

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
    modes = {
        "action_normalization": _data_arg(config, "action_normalization", "minmax"),
        "state_normalization": _data_arg(config, "state_normalization", "zscore"),
    }
    _check_modes(**modes)
    norm_stats_source = _data_arg(config, "norm_stats_source", "data")
    if norm_stats_source not in STATS_SOURCES:
        raise ValueError(f"norm_stats_source must be one of {list(STATS_SOURCES)}, got {norm_stats_source!r}")

    # HDF5 directories and LeRobot roots alike (data_utils.episode_source); lerobot_features (the task's
    # "lerobot_features") names the state/action/reasoning features of its LeRobot roots.
    for directory in [*dataset_dir_l, *(stats_dir_l or [])]:
        if is_lerobot_root(directory):
            configure_lerobot_features(directory, lerobot_features)
    path_lists = [find_episodes(d, skip_mirrored_data, name_filter) for d in dataset_dir_l]
    num_episodes_l = [len(paths) for paths in path_lists]
    dataset_path_list = flatten_list(path_lists)
    stats_path_list = (
        dataset_path_list
        if stats_dir_l is None
        else flatten_list([find_episodes(d, skip_mirrored_data, name_filter) for d in stats_dir_l])
    )
    stats_kwargs = dict(
        delta_control=delta_control,
        camera_names=camera_names,
        chunk_size=chunk_size,
        dataset_dirs=[str(d) for d in dataset_dir_l],
        **modes,
    )
    meta_stats = None
    if norm_stats is not None:
        meta_stats = norm_stats, [episode_length(ref) for ref in stats_path_list]
    elif norm_stats_source == "dataset_meta":
        # Before the (longer) checks: a directory that is not a LeRobot root is a configuration error.
        meta_stats = get_meta_norm_stats(stats_dir_l or dataset_dir_l, stats_path_list, **stats_kwargs)

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

    norm_stats, stats_lengths = meta_stats or get_norm_stats(stats_path_list, **stats_kwargs)
    if norm_stats.state_dim != (state_dim or norm_stats.state_dim) or norm_stats.action_dim != (
        action_dim or norm_stats.action_dim
    ):
        raise ValueError(
            f"load_data: statistics of width state {norm_stats.state_dim} / action {norm_stats.action_dim}, but "
            f"state_dim={state_dim} / action_dim={action_dim} were asked for"
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
        f"train {len(train_ids)}, val {len(val_ids)}; stats over {len(stats_path_list)} episodes "
        f"(source {norm_stats_source}; actions {norm_stats.action_normalization}, state {norm_stats.state_normalization})"
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
        pad_to=pad_to,
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


def load_embodiment_data(
    task_configs: Sequence[dict[str, Any]],
    batch_size_train: int,
    batch_size_val: int,
    chunk_size: int,
    make_process: Callable[[str | None, Sequence[str]], SampleProcessor | None],
    config: dict[str, Any] | None = None,
    rank0_print: Callable[..., None] = print,
    skip_mirrored_data: bool = False,
    policy_class: str | None = None,
    seed: int = 0,
) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None, EmbodimentStats, dict[str, dict[str, Any]]]:
    """:func:`load_data` over several tasks (``get_task_configs``), possibly of several embodiments.

    Each embodiment gets its own statistics (over the statistics episodes of all its tasks), its own cameras and
    a processor ``make_process(embodiment name or None, camera_names)`` (the name only with several embodiments:
    it goes into the prompt). With several embodiments every sample's state/action is zero-padded to the widest
    embodiment's and carries ``state_mask``/``action_mask``. The tasks' training sets are laid out one after
    another (``EmbodimentConcatDataset``) and the sampler draws over all their directories: by steps, or by
    ``sample_weights`` when every task gives them.

    Returns ``(train_dataset, val_dataset or None, EmbodimentStats, sampler_params)``.
    """
    from aloha_scripts.constants import task_embodiments

    embodiments = task_embodiments(task_configs)
    multi = len(embodiments) > 1
    pad_to = (
        (max(e["state_dim"] for e in embodiments.values()), max(e["action_dim"] for e in embodiments.values()))
        if multi
        else None
    )
    weights = [c["sample_weights"] for c in task_configs]
    if any(w is None for w in weights) and any(w is not None for w in weights):
        raise ValueError(
            "tasks " + ", ".join(c["task_name"] for c in task_configs) + ": give sample_weights for every task or "
            "for none (without them the sampler draws in proportion to steps)"
        )
    shared_stats: dict[str, NormStats] = {}
    for name, info in embodiments.items():
        if len(info["tasks"]) > 1:
            # One embodiment, several tasks: one set of statistics over all of them.
            tasks = [c for c in task_configs if c["embodiment"] == name]
            if _data_arg(config, "norm_stats_source", "data") != "data":
                raise ValueError(f"embodiment {name!r} spans tasks {info['tasks']}: use --norm_stats_source data")
            paths, dirs = [], []
            for task in tasks:
                for directory in task["dataset_dir"] + (task["stats_dir"] or []):
                    if is_lerobot_root(directory):
                        configure_lerobot_features(directory, task["lerobot_features"])
                for directory in task["stats_dir"] or task["dataset_dir"]:
                    paths += find_episodes(directory, skip_mirrored_data, task["name_filter"])
                dirs += task["dataset_dir"]
            shared_stats[name], _ = get_norm_stats(
                paths,
                delta_control=bool(_data_arg(config, "delta_control", False)),
                camera_names=info["camera_names"],
                chunk_size=chunk_size,
                dataset_dirs=dirs,
                action_normalization=_data_arg(config, "action_normalization", "minmax"),
                state_normalization=_data_arg(config, "state_normalization", "zscore"),
            )
    trains, vals, stats = [], [], {}
    train_params: dict[str, Any] = {"episode_len_l": [], "sample_weights": []}
    eval_lens: list[list[int]] = []
    for task in task_configs:
        name = task["embodiment"]
        train, val, task_stats, params = load_data(
            task["dataset_dir"], task["name_filter"], task["camera_names"], batch_size_train, batch_size_val,
            chunk_size, config=config, rank0_print=rank0_print, skip_mirrored_data=skip_mirrored_data,
            policy_class=policy_class, stats_dir_l=task["stats_dir"], sample_weights=task["sample_weights"],
            train_ratio=task["train_ratio"], llava_pythia_process=make_process(name if multi else None, task["camera_names"]),
            seed=seed, state_dim=task["state_dim"], action_dim=task["action_dim"],
            lerobot_features=task["lerobot_features"], norm_stats=shared_stats.get(name), pad_to=pad_to,
        )
        stats.setdefault(name, task_stats)
        trains.append(train)
        if val is not None:
            vals.append(val)
        train_params["episode_len_l"] += params["train"]["episode_len_l"]
        train_params["sample_weights"] += list(params["train"]["sample_weights"] or [])
        eval_lens += params["eval"]["episode_len_l"]
        episode_first = params["train"]["episode_first"]
    sampler_params = {
        "train": {
            "batch_size": batch_size_train,
            "episode_len_l": train_params["episode_len_l"],
            "sample_weights": train_params["sample_weights"] or None,
            "episode_first": episode_first,
        },
        "eval": {
            "batch_size": batch_size_val,
            # One split over all tasks' validation episodes, in the order of the concatenated validation set.
            "episode_len_l": [flatten_list(eval_lens)] if eval_lens else [],
            "sample_weights": None,
            "episode_first": episode_first,
        },
    }
    rank0_print(
        f"load_embodiment_data: {len(task_configs)} task(s), embodiments "
        + ", ".join(f"{n} (state {s.state_dim}, action {s.action_dim}, cameras {s.camera_names})" for n, s in stats.items())
        + (f"; padded to state {pad_to[0]}, action {pad_to[1]}" if pad_to else "")
    )
    train_dataset: torch.utils.data.Dataset = trains[0] if len(trains) == 1 else EmbodimentConcatDataset(trains)
    val_dataset = None if not vals else (vals[0] if len(vals) == 1 else EmbodimentConcatDataset(vals))
    return train_dataset, val_dataset, EmbodimentStats(stats), sampler_params
