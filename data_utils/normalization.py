"""Normalisation statistics: the one place training and inference read them from.

By default (the reference's) state (qpos) is z-scored and actions are min-max scaled to [-1, 1].
Either can instead be quantile-scaled (``action_normalization`` / ``state_normalization``
``"quantile"``): the 1st and 99th percentiles map to -1 and 1, as openpi does for pi0-FAST / pi0.5
(``src/openpi/transforms.py``, ``Normalize._normalize_quantile``):
``x_norm = (x - q01) / (q99 - q01 + 1e-6) * 2 - 1``, inverse ``(x_norm + 1) / 2 * (q99 - q01 + 1e-6) + q01``.
Values beyond the percentiles land outside [-1, 1] (not clipped), so one outlier barely moves the scale.

The statistics and the modes are stored as ``dataset_stats.json`` (plain lists, no pickle) beside every
checkpoint, so inference applies what training did. Format 1 files (no mode keys) read as min-max / z-score.

A run over several embodiments (robots whose state/action widths, cameras or units differ) keeps one
``NormStats`` per embodiment (:class:`EmbodimentStats`), written as
``{"format_version": 3, "embodiments": {name: <one NormStats dict + "action_semantics">}}``; a
single-embodiment run writes the flat format 2 file as before, and :func:`load_embodiment_stats` reads both.
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
# 2: adds action_normalization / state_normalization / stats_source and the optional quantile arrays.
STATS_FORMAT_VERSION = 2
# 3: several embodiments, ``{"format_version": 3, "embodiments": {name: <format 2 dict>}}`` (EmbodimentStats).
MULTI_STATS_FORMAT_VERSION = 3
# The name of the one embodiment of a flat (single-embodiment) file, which records no name.
DEFAULT_EMBODIMENT = "default"
ACTION_NORMALIZATIONS = ("minmax", "quantile")
STATE_NORMALIZATIONS = ("zscore", "quantile")
# "data": our streamed pass over the episodes; "dataset_meta": LeRobot roots' meta/stats.json.
STATS_SOURCES = ("data", "dataset_meta")
# openpi's epsilon in the quantile scale's denominator (src/openpi/transforms.py).
QUANTILE_EPS = 1e-6
QUANTILE_LOW, QUANTILE_HIGH = 0.01, 0.99
# Rows the streamed quantiles hold; more are subsampled (RunningQuantiles).
QUANTILE_EXACT_MAX_ROWS = 2_000_000
QUANTILE_SEED = 0
# Floors and margins of the reference (data_utils/utils.py: get_norm_stats).
STD_FLOOR = 1e-2
MINMAX_MARGIN = 1e-4

_ARRAY_FIELDS = ("action_mean", "action_std", "action_min", "action_max", "qpos_mean", "qpos_std")
# Present only when some mode needs them (or the stats came from a source that has them).
QUANTILE_FIELDS = ("action_q01", "action_q99", "qpos_q01", "qpos_q99")

ArrayLike = np.ndarray | torch.Tensor


def write_stats_file(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` as ``dataset_stats.json`` through a temporary file and ``os.replace`` (``path``: a directory
    or a ``.json`` file path); returns the file written."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".json":
        path = path / STATS_FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return path



def read_stats_file(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """The parsed ``dataset_stats.json`` (``path``: the file or its directory) and the file's path; a missing or
    non-JSON file is an error naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / STATS_FILE_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: no dataset statistics file (expected {STATS_FILE_NAME})")
    try:
        return json.loads(path.read_text()), path
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON statistics file ({err})") from err

@dataclass
class NormStats:
    """Per-dimension statistics of actions and states, how they are applied, and what they were computed on.

    ``action_normalization``: ``"minmax"`` (``action_min``/``action_max`` to [-1, 1]) or ``"quantile"``
    (``action_q01``/``action_q99`` to [-1, 1]); ``state_normalization``: ``"zscore"`` (``qpos_mean``/
    ``qpos_std``) or ``"quantile"`` (``qpos_q01``/``qpos_q99``). A quantile mode needs its two arrays;
    ``stats_source`` says where the numbers came from (``"data"``: our streamed pass; ``"dataset_meta"``:
    LeRobot ``meta/stats.json``).
    """

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
    action_normalization: str = "minmax"
    state_normalization: str = "zscore"
    action_q01: np.ndarray | None = None
    action_q99: np.ndarray | None = None
    qpos_q01: np.ndarray | None = None
    qpos_q99: np.ndarray | None = None
    stats_source: str = "data"

    def __post_init__(self) -> None:
        for name, allowed in (
            ("action_normalization", ACTION_NORMALIZATIONS),
            ("state_normalization", STATE_NORMALIZATIONS),
            ("stats_source", STATS_SOURCES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"NormStats.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        for name in _ARRAY_FIELDS + QUANTILE_FIELDS:
            if getattr(self, name) is None:  # only quantile arrays may be absent (checked below)
                continue
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
        for prefix, mode, width in (
            ("action", self.action_normalization, self.action_dim),
            ("qpos", self.state_normalization, self.state_dim),
        ):
            low, high = getattr(self, f"{prefix}_q01"), getattr(self, f"{prefix}_q99")
            if (low is None) != (high is None):
                raise ValueError(f"NormStats {prefix}_q01 and {prefix}_q99 come together; one of them is missing")
            if low is None and mode == "quantile":
                raise ValueError(
                    f"NormStats: {'action' if prefix == 'action' else 'state'}_normalization='quantile' needs "
                    f"{prefix}_q01 and {prefix}_q99 (missing)"
                )
            for name, value in ((f"{prefix}_q01", low), (f"{prefix}_q99", high)):
                if value is not None and len(value) != width:
                    raise ValueError(f"NormStats.{name} has length {len(value)}, expected {width} (like {prefix}_mean)")
        problems = self._invalid_values()
        if problems:
            raise ValueError(
                "NormStats would not normalise to finite numbers (computed statistics floor the std at "
                f"{STD_FLOOR} and keep max > min, q99 > q01; recompute them from the data): " + "; ".join(problems)
            )

    def _invalid_values(self) -> list[str]:
        """One line per key whose (float32) values break the transforms, naming the offending indices."""
        problems: list[str] = []
        for name in _ARRAY_FIELDS + QUANTILE_FIELDS:
            values = getattr(self, name)
            if values is None:
                continue
            where = np.flatnonzero(~np.isfinite(values))
            if where.size:
                problems.append(f"key '{name}': non-finite (in float32) at indices {_indices(where)}: {values[where]}")
        for name in ("action_std", "qpos_std"):
            values = getattr(self, name)
            where = np.flatnonzero(values <= 0)  # NaN compares False: reported above
            if where.size:
                problems.append(f"key '{name}': std must be > 0, at indices {_indices(where)}: {values[where]}")
        for low_name, high_name, what in (
            ("action_min", "action_max", "min must be < max"),
            ("action_q01", "action_q99", "q01 must be < q99"),
            ("qpos_q01", "qpos_q99", "q01 must be < q99"),
        ):
            lo, hi = getattr(self, low_name), getattr(self, high_name)
            if lo is None:
                continue
            where = np.flatnonzero(np.isfinite(lo) & np.isfinite(hi) & (lo >= hi))
            if where.size:
                problems.append(
                    f"keys '{low_name}'/'{high_name}': {what}, at indices {_indices(where)}: "
                    f"{low_name} {lo[where]} >= {high_name} {hi[where]}"
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
        """JSON-ready statistics, written in the current format (``STATS_FORMAT_VERSION``)."""
        out: dict[str, Any] = {name: getattr(self, name).tolist() for name in _ARRAY_FIELDS}
        out.update(
            {name: getattr(self, name).tolist() for name in QUANTILE_FIELDS if getattr(self, name) is not None}
        )
        out.update(
            action_normalization=self.action_normalization,
            state_normalization=self.state_normalization,
            stats_source=self.stats_source,
            camera_names=list(self.camera_names),
            state_dim=self.state_dim,
            action_dim=self.action_dim,
            chunk_size=self.chunk_size,
            delta_control=bool(self.delta_control),
            dataset_dirs=[str(d) for d in self.dataset_dirs],
            num_episodes=int(self.num_episodes),
            num_steps=int(self.num_steps),
            format_version=STATS_FORMAT_VERSION,
        )
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> NormStats:
        """Statistics from ``to_dict``'s output; every problem raises an error naming ``source`` and the key.

        Values that would make normalisation divide by zero or give non-finite numbers (NaN/inf, std <= 0,
        min >= max, q01 >= q99: a corrupted or hand-edited file) are refused. A file without the mode keys
        (format 1, written before quantile normalisation existed) reads as min-max actions, z-scored state.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object of statistics, found {type(data).__name__}")
        if "embodiments" in data:
            raise ValueError(
                f"{source}: holds the statistics of several embodiments ({sorted(data['embodiments'])}); read it with "
                "data_utils.normalization.load_embodiment_stats and pick one"
            )
        missing = [k for k in _ARRAY_FIELDS if k not in data]
        if missing:
            raise KeyError(f"{source}: missing key(s) {missing}; a dataset_stats.json needs {list(_ARRAY_FIELDS)}")
        version = int(data.get("format_version", 1))
        if version > STATS_FORMAT_VERSION:
            raise ValueError(f"{source}: format_version {version} is newer than this code ({STATS_FORMAT_VERSION})")
        arrays = {}
        for key in _ARRAY_FIELDS + tuple(k for k in QUANTILE_FIELDS if k in data):
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
                action_normalization=data.get("action_normalization", "minmax"),
                state_normalization=data.get("state_normalization", "zscore"),
                stats_source=data.get("stats_source", "data"),
            )
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from err
        for dim_key, actual in (("state_dim", stats.state_dim), ("action_dim", stats.action_dim)):
            if dim_key in data and int(data[dim_key]) != actual:
                raise ValueError(f"{source}: {dim_key} says {data[dim_key]} but the arrays have length {actual}")
        return stats

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``dataset_stats.json`` atomically; ``path`` may be a directory or a file path."""
        return write_stats_file(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> NormStats:
        """Read ``dataset_stats.json`` (``path`` may be the file or the directory holding it)."""
        data, path = read_stats_file(path)
        return cls.from_dict(data, source=str(path))

    # ---- the transforms -----------------------------------------------------------------------
    def normalize_state(self, qpos: ArrayLike) -> ArrayLike:
        """``qpos (..., state_dim)`` z-scored, or quantile-scaled (``state_normalization``)."""
        if self.state_normalization == "quantile":
            return _quantile_normalize(qpos, self.qpos_q01, self.qpos_q99)
        mean, std = _like(self.qpos_mean, qpos), _like(self.qpos_std, qpos)
        return (qpos - mean) / std

    def unnormalize_state(self, state: ArrayLike) -> ArrayLike:
        """Inverse of :meth:`normalize_state`."""
        if self.state_normalization == "quantile":
            return _quantile_unnormalize(state, self.qpos_q01, self.qpos_q99)
        mean, std = _like(self.qpos_mean, state), _like(self.qpos_std, state)
        return state * std + mean

    def normalize_action(self, action: ArrayLike) -> ArrayLike:
        """``action (..., action_dim)`` scaled to [-1, 1] by min-max or by q01/q99 (``action_normalization``)."""
        if self.action_normalization == "quantile":
            return _quantile_normalize(action, self.action_q01, self.action_q99)
        lo, hi = _like(self.action_min, action), _like(self.action_max, action)
        return (action - lo) / (hi - lo) * 2 - 1

    def unnormalize_action(self, action: ArrayLike) -> ArrayLike:
        """Exact inverse of :meth:`normalize_action`."""
        if self.action_normalization == "quantile":
            return _quantile_unnormalize(action, self.action_q01, self.action_q99)
        lo, hi = _like(self.action_min, action), _like(self.action_max, action)
        return (action + 1) / 2 * (hi - lo) + lo


def action_semantics(stats: NormStats) -> str:
    """What an embodiment's actions mean, as the checkpoint lists it: deltas or absolute targets."""
    return "delta_from_state" if stats.delta_control else "absolute"


class EmbodimentStats(dict):
    """``{embodiment name: NormStats}`` of a run, in the order the run lists its embodiments.

    With one embodiment :meth:`save` writes that embodiment's flat (format 2) file, exactly as a run before
    embodiments existed; with several, format 3 (see the module docstring), where each embodiment's block also
    says ``action_semantics`` (``"absolute"`` targets or ``"delta_from_state"``).
    """

    def __init__(self, stats: dict[str, NormStats]) -> None:
        if not stats:
            raise ValueError("EmbodimentStats needs at least one embodiment")
        for name, value in stats.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"embodiment names must be non-empty strings, got {name!r}")
            if not isinstance(value, NormStats):
                raise TypeError(f"EmbodimentStats[{name!r}] must be a NormStats, got {type(value).__name__}")
        super().__init__(stats)

    @property
    def multi(self) -> bool:
        """Whether this run has several embodiments (state/action padded to the widest, with masks)."""
        return len(self) > 1

    @property
    def state_dim(self) -> int:
        """The model's state width: the widest embodiment's."""
        return max(s.state_dim for s in self.values())

    @property
    def action_dim(self) -> int:
        """The model's action width: the widest embodiment's."""
        return max(s.action_dim for s in self.values())

    def select(self, embodiment: str | None, source: str = "<stats>") -> tuple[str, NormStats]:
        """``(name, stats)`` of ``embodiment``; ``None`` is allowed when there is only one."""
        if embodiment is None:
            if self.multi:
                raise ValueError(
                    f"{source}: the checkpoint has several embodiments {list(self)}; choose one (embodiment=...)"
                )
            return next(iter(self.items()))
        if embodiment not in self:
            if not self.multi:
                raise ValueError(
                    f"{source}: the checkpoint has a single embodiment and records no embodiment named "
                    f"{embodiment!r}; leave the embodiment out"
                )
            raise ValueError(f"{source}: no embodiment {embodiment!r}; the checkpoint has {list(self)}")
        return embodiment, self[embodiment]

    def to_dict(self) -> dict[str, Any]:
        if not self.multi:
            return next(iter(self.values())).to_dict()
        return {
            "format_version": MULTI_STATS_FORMAT_VERSION,
            "embodiments": {
                name: {**stats.to_dict(), "action_semantics": action_semantics(stats)} for name, stats in self.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> EmbodimentStats:
        """Either format: a flat file is the one embodiment ``DEFAULT_EMBODIMENT``."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object of statistics, found {type(data).__name__}")
        if "embodiments" not in data:
            return cls({DEFAULT_EMBODIMENT: NormStats.from_dict(data, source)})
        version = int(data.get("format_version", MULTI_STATS_FORMAT_VERSION))
        if version > MULTI_STATS_FORMAT_VERSION:
            raise ValueError(f"{source}: format_version {version} is newer than this code ({MULTI_STATS_FORMAT_VERSION})")
        blocks = data["embodiments"]
        if not isinstance(blocks, dict) or not blocks:
            raise ValueError(f"{source}: key 'embodiments' must map embodiment names to statistics, got {blocks!r}")
        return cls({name: NormStats.from_dict(block, f"{source} embodiments.{name}") for name, block in blocks.items()})

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``dataset_stats.json`` atomically (``path``: a directory or a file path), as :meth:`NormStats.save`."""
        return write_stats_file(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbodimentStats:
        return load_embodiment_stats(path)


def load_embodiment_stats(path: str | os.PathLike) -> EmbodimentStats:
    """Read ``dataset_stats.json`` of either format (``path``: the file or its directory)."""
    data, path = read_stats_file(path)
    return EmbodimentStats.from_dict(data, source=str(path))


def _quantile_span(q01: np.ndarray, q99: np.ndarray) -> np.ndarray:
    """float32 ``q99 - q01 + QUANTILE_EPS`` (openpi's denominator), computed in float64."""
    return np.asarray(q99.astype(np.float64) - q01.astype(np.float64) + QUANTILE_EPS, dtype=np.float32)


def _quantile_normalize(x: ArrayLike, q01: np.ndarray, q99: np.ndarray) -> ArrayLike:
    low, span = _like(q01, x), _like(_quantile_span(q01, q99), x)
    return (x - low) / span * 2 - 1


def _quantile_unnormalize(x: ArrayLike, q01: np.ndarray, q99: np.ndarray) -> ArrayLike:
    low, span = _like(q01, x), _like(_quantile_span(q01, q99), x)
    return (x + 1) / 2 * span + low


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


def quantile_bounds(
    q01: np.ndarray, q99: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(q01, q99)`` of shape ``(D,)``, always with q99 > q01.

    Where the two percentiles coincide in float32 (a constant dimension, or one that holds a single value
    in 98% of the rows, e.g. a gripper that rarely moves) the quantile scale would be ``1e-6`` wide and
    blow its few other values up by ~1e6; those dimensions take the min-max bounds of ``lo``/``hi``
    (:func:`minmax_bounds`) instead: a constant dimension is widened exactly as min-max scaling widens it.
    """
    q01_32, q99_32 = np.asarray(q01, dtype=np.float32).copy(), np.asarray(q99, dtype=np.float32).copy()
    collapsed = q99_32 <= q01_32
    if collapsed.any():
        lo32, hi32 = minmax_bounds(lo, hi)
        q01_32[collapsed], q99_32[collapsed] = lo32[collapsed], hi32[collapsed]
    return q01_32, q99_32


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


class RunningQuantiles:
    """Per-dimension quantiles of rows ``(N, D)``, optionally weighted by integer counts, over a streamed pass.

    Exact while at most ``max_rows`` rows (default ``QUANTILE_EXACT_MAX_ROWS`` = 2,000,000) have been given:
    the result is then ``np.quantile(np.repeat(rows, counts, axis=0), q, axis=0)`` (numpy's default
    "linear" rule) of the float32 rows, i.e. a count weighs a row as if it were repeated. Beyond that
    bound it is the same rule over a seeded uniform random subsample of ``max_rows`` of the given rows
    (every row kept with equal probability: the ``max_rows`` smallest of i.i.d. uniform keys drawn from
    ``seed`` in the order the rows arrive, so a pass over the same data in the same order gives the same
    numbers), each kept row still weighted by its count -- an unbiased estimate of the weighted
    distribution. Memory: rows are held in float32 with their keys and counts, at most ``1.5 * max_rows``
    of them between compactions (~216 MB for ``D = 14``).
    """

    def __init__(self, max_rows: int = QUANTILE_EXACT_MAX_ROWS, seed: int = QUANTILE_SEED) -> None:
        if max_rows <= 0:
            raise ValueError(f"RunningQuantiles: max_rows must be positive, got {max_rows}")
        self.max_rows = int(max_rows)
        self.rows_seen = 0
        self._rng = np.random.default_rng(seed)
        self._rows: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._held = 0
        self._dim: int | None = None

    @property
    def exact(self) -> bool:
        """Whether :meth:`quantiles` is exact (every row given is held)."""
        return self.rows_seen <= self.max_rows

    def update(self, rows: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Add ``rows (N, D)``; ``counts (N,)`` non-negative ints: how many times each row occurs (default 1)."""
        rows = np.asarray(rows)
        if rows.ndim != 2:
            raise ValueError(f"RunningQuantiles.update expects (N, D) rows, got shape {rows.shape}")
        if counts is None:
            counts = np.ones(rows.shape[0], dtype=np.int64)
        counts = np.asarray(counts)
        if counts.shape != rows.shape[:1] or counts.dtype.kind not in "iu" or (counts < 0).any():
            raise ValueError(f"RunningQuantiles.update: counts must be ({rows.shape[0]},) non-negative ints")
        if self._dim is None:
            self._dim = rows.shape[1]
        elif rows.shape[1] != self._dim:
            raise ValueError(f"RunningQuantiles: got {rows.shape[1]} dims after {self._dim}")
        keep = counts > 0  # a row that never occurs is not part of the distribution
        rows, counts = rows[keep], counts[keep].astype(np.int64)
        if rows.shape[0] == 0:
            return
        self._rows.append(rows.astype(np.float32))
        self._counts.append(counts)
        self._keys.append(self._rng.random(rows.shape[0]))
        self.rows_seen += rows.shape[0]
        self._held += rows.shape[0]
        if self._held > self.max_rows + self.max_rows // 2:
            self._compact()

    def _compact(self) -> None:
        """Keep the ``max_rows`` rows with the smallest keys (all of them when there are fewer)."""
        rows, counts, keys = np.concatenate(self._rows), np.concatenate(self._counts), np.concatenate(self._keys)
        if len(keys) > self.max_rows:
            kept = np.sort(np.argpartition(keys, self.max_rows - 1)[: self.max_rows])
            rows, counts, keys = rows[kept], counts[kept], keys[kept]
        self._rows, self._counts, self._keys, self._held = [rows], [counts], [keys], len(keys)

    def quantiles(self, qs: tuple[float, ...] = (QUANTILE_LOW, QUANTILE_HIGH)) -> np.ndarray:
        """``(len(qs), D)`` float64 quantiles, ``qs`` in [0, 1]."""
        if self.rows_seen == 0:
            raise ValueError("RunningQuantiles: no rows given")
        self._compact()
        rows, counts = self._rows[0].astype(np.float64), self._counts[0]
        qs_arr = np.asarray(qs, dtype=np.float64)
        if (counts == 1).all():
            return np.quantile(rows, qs_arr, axis=0)
        # Weighted: positions h = q (N - 1) in the rows repeated by their counts (numpy's linear rule).
        order = np.argsort(rows, axis=0, kind="stable")
        values = np.take_along_axis(rows, order, axis=0)
        ends = np.cumsum(counts[order], axis=0)  # (n, D): repeated index one past each sorted row's last copy
        total = int(ends[-1, 0])
        positions = qs_arr * (total - 1)
        below = np.floor(positions).astype(np.int64)
        frac = positions - below
        above = np.minimum(below + 1, total - 1)
        out = np.empty((len(qs_arr), rows.shape[1]))
        for d in range(rows.shape[1]):
            v_below = values[np.searchsorted(ends[:, d], below, side="right"), d]
            v_above = values[np.searchsorted(ends[:, d], above, side="right"), d]
            out[:, d] = v_below + frac * (v_above - v_below)
        return out
