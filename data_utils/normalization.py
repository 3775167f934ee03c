"""Normalisation statistics: the one place training and inference read them from.

State (qpos) is z-scored; actions are min-max scaled to [-1, 1]. The statistics are stored as
``dataset_stats.json`` (plain lists, no pickle) beside every checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATS_FILE_NAME = "dataset_stats.json"
STATS_FORMAT_VERSION = 1
# Floors and margins of the reference (data_utils/utils.py: get_norm_stats).
STD_FLOOR = 1e-2
MINMAX_MARGIN = 1e-4

_ARRAY_FIELDS = ("action_mean", "action_std", "action_min", "action_max", "qpos_mean", "qpos_std")

ArrayLike = np.ndarray | torch.Tensor


@dataclass
class NormStats:
    """Per-dimension statistics of actions and states, plus what they were computed on."""

    action_mean: np.ndarray
    action_std: np.ndarray
    action_min: np.ndarray
    action_max: np.ndarray
    qpos_mean: np.ndarray
    qpos_std: np.ndarray
    camera_names: list[str] = field(default_factory=list)
    chunk_size: int | None = None
    delta_control: bool = False
    dataset_dirs: list[str] = field(default_factory=list)
    num_episodes: int = 0
    num_steps: int = 0
    format_version: int = STATS_FORMAT_VERSION

    def __post_init__(self) -> None:
        for name in _ARRAY_FIELDS:
            value = np.asarray(getattr(self, name), dtype=np.float32)
            if value.ndim != 1:
                raise ValueError(f"NormStats.{name} must be 1-D, got shape {value.shape}")
            setattr(self, name, value)
        action_lengths = [len(getattr(self, n)) for n in _ARRAY_FIELDS[:4]]
        if len(set(action_lengths)) != 1:
            raise ValueError(f"NormStats {list(_ARRAY_FIELDS[:4])} must have one length, found {action_lengths}")
        if len(self.qpos_mean) != len(self.qpos_std):
            raise ValueError(
                f"NormStats qpos_mean and qpos_std must have one length, found {len(self.qpos_mean)}, {len(self.qpos_std)}"
            )
        problems = self._invalid_values()
        if problems:
            raise ValueError(
                "NormStats would not normalise to finite numbers (computed statistics floor the std at "
                f"{STD_FLOOR} and keep max > min; recompute them from the data): " + "; ".join(problems)
            )

    def _invalid_values(self) -> list[str]:
        """One line per key whose (float32) values break the transforms, naming the offending indices."""
        problems: list[str] = []
        for name in _ARRAY_FIELDS:
            values = getattr(self, name)
            where = np.flatnonzero(~np.isfinite(values))
            if where.size:
                problems.append(f"key '{name}': non-finite (in float32) at indices {_indices(where)}: {values[where]}")
        for name in ("action_std", "qpos_std"):
            values = getattr(self, name)
            where = np.flatnonzero(values <= 0)  # NaN compares False: reported above
            if where.size:
                problems.append(f"key '{name}': std must be > 0, at indices {_indices(where)}: {values[where]}")
        lo, hi = self.action_min, self.action_max
        where = np.flatnonzero(np.isfinite(lo) & np.isfinite(hi) & (lo >= hi))
        if where.size:
            problems.append(
                f"keys 'action_min'/'action_max': min must be < max, at indices {_indices(where)}: "
                f"min {lo[where]} >= max {hi[where]}"
            )
        return problems

    @property
    def action_dim(self) -> int:
        return int(self.action_mean.shape[0])

    @property
    def state_dim(self) -> int:
        return int(self.qpos_mean.shape[0])

    # ---- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name).tolist() for name in _ARRAY_FIELDS}
        out.update(
            camera_names=list(self.camera_names),
            state_dim=self.state_dim,
            action_dim=self.action_dim,
            chunk_size=self.chunk_size,
            delta_control=bool(self.delta_control),
            dataset_dirs=[str(d) for d in self.dataset_dirs],
            num_episodes=int(self.num_episodes),
            num_steps=int(self.num_steps),
            format_version=int(self.format_version),
        )
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> NormStats:
        """Statistics from ``to_dict``'s output; every problem raises an error naming ``source`` and the key.

        Values that would make normalisation divide by zero or give non-finite numbers (NaN/inf, std <= 0,
        min >= max: a corrupted or hand-edited file) are refused.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object of statistics, found {type(data).__name__}")
        missing = [k for k in _ARRAY_FIELDS if k not in data]
        if missing:
            raise KeyError(f"{source}: missing key(s) {missing}; a dataset_stats.json needs {list(_ARRAY_FIELDS)}")
        version = int(data.get("format_version", STATS_FORMAT_VERSION))
        if version > STATS_FORMAT_VERSION:
            raise ValueError(f"{source}: format_version {version} is newer than this code ({STATS_FORMAT_VERSION})")
        arrays = {}
        for key in _ARRAY_FIELDS:
            try:
                with np.errstate(over="ignore"):  # beyond float32's range: inf, refused below naming the key
                    arrays[key] = np.asarray(data[key], dtype=np.float32)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{source}: key '{key}' must be a list of numbers ({err})") from err
        try:
            stats = cls(
                **arrays,
                camera_names=list(data.get("camera_names", [])),
                chunk_size=data.get("chunk_size"),
                delta_control=bool(data.get("delta_control", False)),
                dataset_dirs=list(data.get("dataset_dirs", [])),
                num_episodes=int(data.get("num_episodes", 0)),
                num_steps=int(data.get("num_steps", 0)),
                format_version=version,
            )
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from err
        for dim_key, actual in (("state_dim", stats.state_dim), ("action_dim", stats.action_dim)):
            if dim_key in data and int(data[dim_key]) != actual:
                raise ValueError(f"{source}: {dim_key} says {data[dim_key]} but the arrays have length {actual}")
        return stats

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``dataset_stats.json`` atomically; ``path`` may be a directory or a file path."""
        path = Path(path)
        if path.is_dir() or path.suffix != ".json":
            path = path / STATS_FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> NormStats:
        """Read ``dataset_stats.json`` (``path`` may be the file or the directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / STATS_FILE_NAME
        if not path.exists():
            raise FileNotFoundError(f"{path}: no dataset statistics file (expected {STATS_FILE_NAME})")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a JSON statistics file ({err})") from err
        return cls.from_dict(data, source=str(path))

    # ---- the transforms -----------------------------------------------------------------------
    def normalize_state(self, qpos: ArrayLike) -> ArrayLike:
        """Z-score ``qpos`` of shape ``(..., state_dim)``."""
        mean, std = _like(self.qpos_mean, qpos), _like(self.qpos_std, qpos)
        return (qpos - mean) / std

    def unnormalize_state(self, state: ArrayLike) -> ArrayLike:
        mean, std = _like(self.qpos_mean, state), _like(self.qpos_std, state)
        return state * std + mean

    def normalize_action(self, action: ArrayLike) -> ArrayLike:
        """Min-max scale ``action`` of shape ``(..., action_dim)`` to [-1, 1]."""
        lo, hi = _like(self.action_min, action), _like(self.action_max, action)
        return (action - lo) / (hi - lo) * 2 - 1

    def unnormalize_action(self, action: ArrayLike) -> ArrayLike:
        """Exact inverse of :meth:`normalize_action`."""
        lo, hi = _like(self.action_min, action), _like(self.action_max, action)
        return (action + 1) / 2 * (hi - lo) + lo


def _indices(where: np.ndarray, limit: int = 20) -> str:
    shown = where[:limit].tolist()
    return str(shown) if where.size <= limit else f"{shown} and {where.size - limit} more"


def minmax_bounds(lo: np.ndarray, hi: np.ndarray, margin: float = MINMAX_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(lo - margin, hi + margin)`` of per-dimension minima/maxima ``(D,)``, always with max > min.

    The reference's margin is lost to float32 rounding on a constant dimension of large magnitude (above
    2048, float32's spacing exceeds 2 * margin), which would leave min == max and min-max scaling dividing
    by zero; there the bounds move apart to the neighbouring float32 values instead.
    """
    lo32 = np.asarray(np.asarray(lo, dtype=np.float64) - margin, dtype=np.float32)
    hi32 = np.asarray(np.asarray(hi, dtype=np.float64) + margin, dtype=np.float32)
    collapsed = hi32 <= lo32
    lo32[collapsed] = np.nextafter(lo32[collapsed], np.float32(-np.inf))
    hi32[collapsed] = np.nextafter(hi32[collapsed], np.float32(np.inf))
    return lo32, hi32


def _like(array: np.ndarray, reference: ArrayLike) -> ArrayLike:
    if isinstance(reference, torch.Tensor):
        dtype = reference.dtype if reference.is_floating_point() else torch.float32
        return torch.as_tensor(array, dtype=dtype, device=reference.device)
    return array.astype(np.result_type(reference.dtype, np.float32), copy=False)


class RunningStats:
    """Streaming per-dimension mean / unbiased std / min / max over rows of ``(N, D)`` arrays.

    Accumulates in float64 so long datasets don't lose precision; never holds the data itself.
    """

    def __init__(self) -> None:
        self.count = 0
        self._sum: np.ndarray | None = None
        self._sumsq: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None

    def update(self, rows: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Add ``rows (N, D)``; ``counts (N,)`` non-negative ints: how many times each row occurs (default 1)."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2:
            raise ValueError(f"RunningStats.update expects (N, D) rows, got shape {rows.shape}")
        if counts is not None:
            counts = np.asarray(counts)
            if counts.shape != rows.shape[:1] or counts.dtype.kind not in "iu" or (counts < 0).any():
                raise ValueError(f"RunningStats.update: counts must be ({rows.shape[0]},) non-negative ints")
            rows, counts = rows[counts > 0], counts[counts > 0]  # a row that never occurs sets no min/max
        if self._sum is None:
            dim = rows.shape[1]
            self._sum, self._sumsq = np.zeros(dim), np.zeros(dim)
            self.min, self.max = np.full(dim, np.inf), np.full(dim, -np.inf)
        elif rows.shape[1] != self._sum.shape[0]:
            raise ValueError(f"RunningStats: got {rows.shape[1]} dims after {self._sum.shape[0]}")
        if rows.shape[0] == 0:
            return
        if counts is None:
            self.count += rows.shape[0]
            self._sum += rows.sum(axis=0)
            self._sumsq += np.square(rows).sum(axis=0)
        else:
            weights = counts.astype(np.float64)
            self.count += int(counts.sum())
            self._sum += weights @ rows
            self._sumsq += weights @ np.square(rows)
        self.min = np.minimum(self.min, rows.min(axis=0))
        self.max = np.maximum(self.max, rows.max(axis=0))

    @property
    def mean(self) -> np.ndarray:
        return self._sum / self.count

    @property
    def std(self) -> np.ndarray:
        # Unbiased, as torch.std in the reference.
        denom = max(self.count - 1, 1)
        var = (self._sumsq - self.count * np.square(self.mean)) / denom
        return np.sqrt(np.clip(var, 0.0, None))
