"""Writing LeRobotDataset v3.0 roots without the ``lerobot`` library, streamed one episode at a time.

The layout, file names, parquet schemas, ``meta/info.json`` keys, ``meta/stats.json`` structure and
episode-metadata columns are those ``lerobot`` 0.4.4's own writer produces (checked field by field
against ``tests/data/lerobot_fixture``, which that writer made), so the library's ``LeRobotDataset``
opens the result (``scripts/check_lerobot_with_library.py``) as does :mod:`data_utils.lerobot_io`.

Streaming: each camera has one open encoder whose mp4 holds the episodes back to back (frame ``t``
of an episode starting ``s`` frames into the file has presentation time ``(s + t) / fps``, which is
what the library's concatenation produces); data rows go to an open parquet writer as one row group
per episode. Memory holds one frame per camera, one episode's vectors and a subsample of its frames
for the image statistics. Like the library, a data or video file is closed and the next one
(``file-001``, ...) started once it has reached ``data_files_size_in_mb``/``video_files_size_in_mb``
(checked between episodes, so a file ends at most one episode past the limit).

Statistics follow the library: per episode (stored as ``stats/<feature>/<stat>`` columns of the
episode metadata) and aggregated over episodes (``meta/stats.json``): ``min``, ``max``, ``mean``,
``std``, ``count`` and the quantiles ``q01 q10 q50 q90 q99``. Vector quantiles are exact per episode
(the library approximates them with histograms); image statistics are per channel in ``[0, 1]``
over the library's subsample of frames, with exact quantiles (from 256-bin counts). Aggregated
quantiles are the count-weighted mean of the episodes' quantiles, as the library computes them.

DexVLA-specific metadata lives under one extra ``meta/info.json`` key, ``"dexvla"`` (the library
ignores unknown keys): ``{"source": "act_hdf5", "sim": bool}`` for data converted from ACT HDF5.
See :func:`recorded_sim`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_utils.lerobot_io import DEXVLA_INFO_KEY, recorded_sim  # noqa: F401  (re-exported)
from data_utils.video_encode import DEFAULT_CODEC, DEFAULT_CRF, DEFAULT_GOP

CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNKS_SIZE = 1000
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
CAMERA_PREFIX = "observation.images."
# Where ACT's /observations/qvel goes; the name LeRobot's ALOHA ports use for joint velocities.
VELOCITY_KEY = "observation.velocity"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
# The library's per-episode image subsample (compute_stats.estimate_num_samples / auto_downsample_height_width).
MIN_IMAGE_SAMPLES, MAX_IMAGE_SAMPLES, IMAGE_SAMPLE_POWER = 100, 10_000, 0.75
DOWNSAMPLE_TARGET, DOWNSAMPLE_THRESHOLD = 150, 300
# The library buffers this many episode-metadata rows per parquet row group.
EPISODES_PER_ROW_GROUP = 10
# What the library writes as DEFAULT_FEATURES, after the user's features.
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
VIDEO_CODECS = ("libsvtav1", "h264", "hevc")  # the software encoders the library accepts by these names
# pandas' metadata for a frame indexed by task string, so that the library's pd.read_parquet gets that index back
# (pandas is not a dependency of .venv; this is what pandas 2.3 writes for DataFrame({"task_index": ...}, index=tasks)).
_TASKS_PANDAS_METADATA = {
    "index_columns": ["__index_level_0__"],
    "column_indexes": [
        {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}
    ],
    "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
        {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
    ],
    "creator": {"library": "pyarrow", "version": pa.__version__},
    "pandas_version": "2.3.3",
}


def vector_feature(dim: int, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Feature spec of a ``(dim,)`` float32 vector (state, action, velocity)."""
    return {"dtype": "float32", "shape": [int(dim)], "names": list(names) if names is not None else [f"joint_{j}" for j in range(dim)]}


def video_feature(height: int, width: int) -> dict[str, Any]:
    """Feature spec of an ``(H, W, 3)`` camera stored as video; ``info`` is filled from the file when finalised."""
    return {"dtype": "video", "shape": [int(height), int(width), 3], "names": ["height", "width", "channels"]}


def string_feature() -> dict[str, Any]:
    return {"dtype": "string", "shape": [1], "names": None}


def next_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    """The file after ``(chunk, file)``: a chunk holds ``chunks_size`` files (the library's rule)."""
    return (chunk_index + 1, 0) if file_index == chunks_size - 1 else (chunk_index, file_index + 1)


# ---- statistics ---------------------------------------------------------------------------------


def vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of ``values (T, D)`` over frames: each stat ``(D,)``, ``count`` ``(1,)``.

    Integer columns keep integer ``min``/``max`` (as the library's); a single frame gives its value
    as every quantile (the library's rule for fewer than two samples).
    """
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    as_float = values.astype(np.float64)
    stats = {
        "min": values.min(axis=0),
        "max": values.max(axis=0),
        "mean": as_float.mean(axis=0),
        "std": as_float.std(axis=0),
        "count": np.array([len(values)], dtype=np.int64),
    }
    if len(values) < 2:
        quantiles = [stats["mean"].copy() for _ in QUANTILES]
    else:
        quantiles = list(np.quantile(as_float, QUANTILES, axis=0))
    stats.update(zip(QUANTILE_KEYS, quantiles, strict=True))
    return stats


def _sorted_value(cumulative: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Value (0..255) at 0-based ``rank`` of the sorted pixels whose counts' cumsum is ``cumulative``."""
    return np.searchsorted(cumulative, rank, side="right").astype(np.float64)


def image_stats(samples: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics of ``samples (N, 3, h, w)`` uint8, scaled to ``[0, 1]``: each ``(3, 1, 1)``.

    Quantiles are exact (linear interpolation between order statistics, as ``np.quantile``),
    computed from each channel's 256-bin counts.
    """
    channels = samples.shape[1]
    pixels = samples.transpose(1, 0, 2, 3).reshape(channels, -1)
    counts = np.stack([np.bincount(row, minlength=256) for row in pixels]).astype(np.float64)  # (C, 256)
    total = pixels.shape[1]
    levels = np.arange(256, dtype=np.float64)
    mean = counts @ levels / total
    variance = counts @ (levels**2) / total - mean**2
    stats: dict[str, np.ndarray] = {
        "min": pixels.min(axis=1).astype(np.float64),
        "max": pixels.max(axis=1).astype(np.float64),
        "mean": mean,
        "std": np.sqrt(np.maximum(variance, 0.0)),
    }
    cumulative = np.cumsum(counts, axis=1)
    for key, q in zip(QUANTILE_KEYS, QUANTILES, strict=True):
        position = q * (total - 1)
        low, frac = np.floor(position), position - np.floor(position)
        below = np.array([_sorted_value(cumulative[c], low) for c in range(channels)])
        above = np.array([_sorted_value(cumulative[c], low + 1) if frac > 0 else below[c] for c in range(channels)])
        stats[key] = below + frac * (above - below)
    out = {key: (value / 255.0).reshape(channels, 1, 1) for key, value in stats.items()}
    out["count"] = np.array([samples.shape[0]], dtype=np.int64)
    return out


def aggregate_stats(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Statistics of two disjoint sets from theirs (the library's ``aggregate_feature_stats`` for two)."""
    counts = np.array([first["count"][0], second["count"][0]], dtype=np.float64)
    total = counts.sum()
    shape = (2,) + (1,) * np.ndim(first["mean"])
    weights = counts.reshape(shape)
    means = np.stack([first["mean"], second["mean"]])
    mean = (means * weights).sum(axis=0) / total
    variance = ((np.stack([first["std"], second["std"]]) ** 2 + (means - mean) ** 2) * weights).sum(axis=0) / total
    out = {
        "min": np.minimum(first["min"], second["min"]),
        "max": np.maximum(first["max"], second["max"]),
        "mean": mean,
        "std": np.sqrt(variance),
        "count": np.array([int(total)], dtype=np.int64),
    }
    for key in QUANTILE_KEYS:
        out[key] = (np.stack([first[key], second[key]]) * weights).sum(axis=0) / total
    return out


def image_sample_indices(length: int) -> list[int]:
    """Which frames of a ``length``-frame episode enter the image statistics (the library's choice)."""
    low = min(MIN_IMAGE_SAMPLES, length)
    num = max(low, min(int(length**IMAGE_SAMPLE_POWER), MAX_IMAGE_SAMPLES))
    return np.round(np.linspace(0, length - 1, num)).astype(int).tolist()


def downsample_for_stats(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` -> ``(3, h, w)`` uint8, strided down as the library does for frames of 300 px or more."""
    chw = image.transpose(2, 0, 1)
    height, width = chw.shape[1:]
    if max(height, width) < DOWNSAMPLE_THRESHOLD:
        return np.ascontiguousarray(chw)
    factor = int(width / DOWNSAMPLE_TARGET) if width > height else int(height / DOWNSAMPLE_TARGET)
    return np.ascontiguousarray(chw[:, ::factor, ::factor])


def _jsonable(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {key: {name: np.asarray(value).tolist() for name, value in feature.items()} for key, feature in stats.items()}


# ---- writers ------------------------------------------------------------------------------------


class _VideoFile:
    """One mp4 being written: RGB frames in, presentation time ``frame_number / fps``."""

    def __init__(self, path: Path, fps: int, codec: str, height: int, width: int, options: dict[str, str]) -> None:
        import av  # noqa: PLC0415 - only video writers need it

        self._av = av
        os.environ.setdefault("SVT_LOG", "1")  # errors only: SVT-AV1 otherwise prints its configuration per file
        self.path = path
        self.fps = int(fps)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream(codec, rate=Fraction(self.fps, 1), options=options)
        self.stream.pix_fmt = "yuv420p"
        self.stream.height, self.stream.width = height, width
        self.frames = 0
        self.bytes = 0

    def write(self, image: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = self.frames
        frame.time_base = Fraction(1, self.fps)
        for packet in self.stream.encode(frame):
            self.bytes += packet.size
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self.stream.encode():
            self.bytes += packet.size
            self.container.mux(packet)
        self.container.close()

    def abort(self) -> None:
        try:
            for _ in self.stream.encode():  # drain the encoder (SVT-AV1 complains when closed mid-stream)
                pass
        finally:
            self.container.close()


def codec_options(vcodec: str, crf: int | None, gop: int, encoder_threads: int | None) -> dict[str, str]:
    """The library's encoder options for ``vcodec`` (``_get_codec_options``), plus a thread limit if given."""
    if vcodec not in VIDEO_CODECS:
        raise ValueError(f"vcodec {vcodec!r} is not supported; choose one of {', '.join(VIDEO_CODECS)}")
    options = {"g": str(gop)}
    if crf is not None:
        options["crf"] = str(crf)
    if vcodec == "libsvtav1":
        options["preset"] = "12"
    if encoder_threads is not None:
        if vcodec == "libsvtav1":
            options["svtav1-params"] = f"lp={int(encoder_threads)}"
        else:
            options["threads"] = str(int(encoder_threads))
    return options


def _hf_feature(feature: Mapping[str, Any]) -> dict[str, Any]:
    """The ``datasets`` (4.x) feature JSON the library's writer leaves in the data parquet's metadata."""
    dtype, shape = feature["dtype"], list(feature["shape"])
    if dtype == "string" or shape == [1]:
        return {"dtype": dtype, "_type": "Value"}
    return {"feature": {"dtype": dtype, "_type": "Value"}, "length": shape[0], "_type": "List"}


def _arrow_type(key: str, feature: Mapping[str, Any]) -> pa.DataType:
    dtype, shape = feature["dtype"], list(feature["shape"])
    if dtype == "string":
        return pa.string()
    scalar = pa.from_numpy_dtype(np.dtype(dtype))
    if shape == [1]:
        return scalar
    if len(shape) == 1:
        return pa.list_(scalar, shape[0])
    raise ValueError(f"feature '{key}': shape {shape} is not supported by this writer (scalars and vectors only)")


class LeRobotWriter:
    """Writes a LeRobotDataset v3.0 root episode by episode (see the module docstring).

    Args:
        root: the dataset folder to create; it must not exist yet (an empty folder is accepted).
        fps: frames per second, an integer as in the library.
        features: the user's features in order, each ``{"dtype", "shape", "names"}``: cameras with
            dtype ``"video"`` and shape ``[H, W, 3]``, vectors ``float32``/``[D]``, strings. The
            library's default features (timestamp, indices) are appended.
        robot_type: recorded in ``meta/info.json``.
        vcodec / crf / gop: the encoder (the library's defaults: AV1, crf 30, a keyframe every 2 frames).
        encoder_threads: threads per encoder (codec default when ``None``).
        extra_info: extra top-level ``meta/info.json`` keys (e.g. ``{"dexvla": {...}}``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        fps: int,
        features: Mapping[str, Mapping[str, Any]],
        robot_type: str | None = None,
        vcodec: str = DEFAULT_CODEC,
        crf: int | None = DEFAULT_CRF,
        gop: int = DEFAULT_GOP,
        encoder_threads: int | None = None,
        extra_info: Mapping[str, Any] | None = None,
        chunks_size: int = DEFAULT_CHUNKS_SIZE,
        data_files_size_in_mb: float = DEFAULT_DATA_FILE_SIZE_IN_MB,
        video_files_size_in_mb: float = DEFAULT_VIDEO_FILE_SIZE_IN_MB,
    ) -> None:
        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()):
            raise FileExistsError(f"{self.root}: exists and is not empty; a LeRobot root is written into a new folder")
        if int(fps) != fps or fps <= 0:
            raise ValueError(f"fps must be a positive integer (LeRobot stores it as one), got {fps}")
        unknown = [k for k in features if k in DEFAULT_FEATURES or "/" in k]
        if unknown:
            raise ValueError(f"feature names {unknown} are reserved or contain '/'")
        self.fps = int(fps)
        self.features: dict[str, dict[str, Any]] = {k: dict(v) for k, v in features.items()}
        self.features.update({k: dict(v) for k, v in DEFAULT_FEATURES.items()})
        for key, feature in self.features.items():
            if feature["dtype"] == "image":
                raise ValueError(f"feature '{key}': this writer stores cameras as video only (dtype 'video')")
            if feature["dtype"] == "video":
                height, width, channels = feature["shape"]
                if channels != 3 or height % 2 or width % 2:
                    raise ValueError(
                        f"feature '{key}': video frames must be (H, W, 3) with even H and W (yuv420p), got {feature['shape']}"
                    )
        self.video_keys = [k for k, f in self.features.items() if f["dtype"] == "video"]
        self.data_keys = [k for k, f in self.features.items() if f["dtype"] != "video"]
        self.robot_type = robot_type
        self.vcodec = vcodec
        self.options = codec_options(vcodec, crf, gop, encoder_threads)
        self.extra_info = dict(extra_info or {})
        self.chunks_size = int(chunks_size)
        self.data_files_size_in_mb = data_files_size_in_mb
        self.video_files_size_in_mb = video_files_size_in_mb
        self.schema = pa.schema(
            [pa.field(k, _arrow_type(k, self.features[k])) for k in self.data_keys],
            metadata={
                "huggingface": json.dumps({"info": {"features": {k: _hf_feature(self.features[k]) for k in self.data_keys}}})
            },
        )
        self.tasks: dict[str, int] = {}
        self.stats: dict[str, dict[str, np.ndarray]] = {}
        self.num_episodes = 0
        self.num_frames = 0
        self._data_file = (0, 0)
        self._data_writer: pq.ParquetWriter | None = None
        self._videos: dict[str, _VideoFile] = {}
        self._video_files: dict[str, tuple[int, int]] = {}
        self._episode_rows: list[dict[str, Any]] = []
        self._episodes_writer: pq.ParquetWriter | None = None
        self._episodes_schema: pa.Schema | None = None
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- per episode ------------------------------------------------------------------------------

    def add_episode(
        self,
        task: str,
        vectors: Mapping[str, np.ndarray],
        strings: Mapping[str, Sequence[str]] | None = None,
        frames: Mapping[str, Iterable[np.ndarray]] | None = None,
        source: str = "episode",
    ) -> int:
        """Append one episode; returns its ``episode_index``.

        ``vectors {key: (T, D)}`` for every vector feature, ``strings {key: T strings}`` for every
        string feature, ``frames {camera key: T frames (H, W, 3) uint8}`` consumed lazily, one
        camera after the other (one frame in memory at a time). ``source`` names the episode in errors.
        """
        strings, frames = dict(strings or {}), dict(frames or {})
        vector_keys = [k for k in self.data_keys if k not in DEFAULT_FEATURES and self.features[k]["dtype"] != "string"]
        string_keys = [k for k in self.data_keys if self.features[k]["dtype"] == "string"]
        for name, given, wanted in (("vectors", vectors, vector_keys), ("strings", strings, string_keys), ("frames", frames, self.video_keys)):
            if sorted(given) != sorted(wanted):
                raise ValueError(f"{source}: {name} for features {sorted(given)}, expected {sorted(wanted)}")
        length = None
        arrays: dict[str, np.ndarray] = {}
        for key in vector_keys:
            value = np.asarray(vectors[key], dtype=np.dtype(self.features[key]["dtype"]))
            dim = self.features[key]["shape"][0]
            if value.ndim == 1 and dim == 1:
                value = value[:, None]
            if value.ndim != 2 or value.shape[1] != dim:
                raise ValueError(f"{source}: feature '{key}' has shape {value.shape}, expected (T, {dim})")
            if length is None:
                length = len(value)
            elif len(value) != length:
                raise ValueError(f"{source}: feature '{key}' has {len(value)} frames, other features {length}")
            arrays[key] = value
        for key in string_keys:
            if len(strings[key]) != length:
                raise ValueError(f"{source}: feature '{key}' has {len(strings[key])} strings for {length} frames")
        if not length:
            raise ValueError(f"{source}: an episode needs at least one frame")

        episode_index = self.num_episodes
        task_index = self.tasks.setdefault(task, len(self.tasks))
        timestamp = (np.arange(length) / self.fps).astype(np.float32)
        frame_index = np.arange(length, dtype=np.int64)
        index = np.arange(self.num_frames, self.num_frames + length, dtype=np.int64)
        defaults = {
            "timestamp": timestamp,
            "frame_index": frame_index,
            "episode_index": np.full(length, episode_index, dtype=np.int64),
            "index": index,
            "task_index": np.full(length, task_index, dtype=np.int64),
        }

        episode_stats: dict[str, dict[str, np.ndarray]] = {}
        video_meta: dict[str, Any] = {}
        for key in self.video_keys:
            video_meta.update(self._write_video(key, frames[key], length, episode_stats, source))
        for key in self.data_keys:
            if self.features[key]["dtype"] != "string":
                episode_stats[key] = vector_stats(arrays[key] if key in arrays else defaults[key])

        columns = []
        for key in self.data_keys:
            field = self.schema.field(key)
            if self.features[key]["dtype"] == "string":
                columns.append(pa.array([str(s) for s in strings[key]], type=pa.string()))
            elif key in DEFAULT_FEATURES:
                columns.append(pa.array(defaults[key], type=field.type))
            elif pa.types.is_fixed_size_list(field.type):
                flat = pa.array(arrays[key].reshape(-1), type=field.type.value_type)
                columns.append(pa.FixedSizeListArray.from_arrays(flat, field.type.list_size))
            else:
                columns.append(pa.array(arrays[key].reshape(-1), type=field.type))
        data_meta = self._write_data(pa.Table.from_arrays(columns, schema=self.schema))

        row: dict[str, Any] = {"episode_index": episode_index, "tasks": [task], "length": length}
        row.update(data_meta)
        row["dataset_from_index"] = self.num_frames
        row["dataset_to_index"] = self.num_frames + length
        row.update(video_meta)
        # Library order: the features' order (strings have no stats).
        for key in self.features:
            if key in episode_stats:
                for name, value in episode_stats[key].items():
                    row[f"stats/{key}/{name}"] = np.asarray(value).tolist()
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        self._episode_rows.append(row)
        if len(self._episode_rows) >= EPISODES_PER_ROW_GROUP:
            self._flush_episode_rows()

        for key, stats in episode_stats.items():
            self.stats[key] = aggregate_stats(self.stats[key], stats) if key in self.stats else stats
        self.num_episodes += 1
        self.num_frames += length
        return episode_index

    def _write_video(
        self, key: str, frames: Iterable[np.ndarray], length: int, episode_stats: dict, source: str
    ) -> dict[str, Any]:
        height, width, _ = self.features[key]["shape"]
        video = self._videos.get(key)
        if video is not None and video.bytes >= self.video_files_size_in_mb * 1024 * 1024:
            video.close()
            del self._videos[key]
            self._video_files[key] = next_file(*self._video_files[key], self.chunks_size)
            video = None
        if video is None:
            chunk_index, file_index = self._video_files.setdefault(key, (0, 0))
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=chunk_index, file_index=file_index)
            video = self._videos[key] = _VideoFile(path, self.fps, self.vcodec, height, width, self.options)
        start = video.frames
        wanted = set(image_sample_indices(length))
        samples = []
        count = 0
        for image in frames:
            if count >= length:
                raise ValueError(f"{source}: camera '{key}' has more than the episode's {length} frames")
            image = np.asarray(image)
            if image.shape != (height, width, 3) or image.dtype != np.uint8:
                raise ValueError(
                    f"{source}: camera '{key}', frame {count} is {image.shape} {image.dtype}, expected ({height}, {width}, 3) uint8"
                )
            video.write(image)
            if count in wanted:
                samples.append(downsample_for_stats(image))
            count += 1
        if count != length:
            raise ValueError(f"{source}: camera '{key}' has {count} frames, the episode {length}")
        episode_stats[key] = image_stats(np.stack(samples))
        chunk_index, file_index = self._video_files[key]
        return {
            f"videos/{key}/chunk_index": chunk_index,
            f"videos/{key}/file_index": file_index,
            f"videos/{key}/from_timestamp": start / self.fps,
            f"videos/{key}/to_timestamp": (start + length) / self.fps,
        }

    def _write_data(self, table: pa.Table) -> dict[str, int]:
        if self._data_writer is not None:
            path = self.root / DATA_PATH.format(chunk_index=self._data_file[0], file_index=self._data_file[1])
            if path.stat().st_size >= self.data_files_size_in_mb * 1024 * 1024:
                self._data_writer.close()
                self._data_writer = None
                self._data_file = next_file(*self._data_file, self.chunks_size)
        if self._data_writer is None:
            path = self.root / DATA_PATH.format(chunk_index=self._data_file[0], file_index=self._data_file[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, self.schema, compression="snappy", use_dictionary=True)
        self._data_writer.write_table(table)
        return {"data/chunk_index": self._data_file[0], "data/file_index": self._data_file[1]}

    def _flush_episode_rows(self) -> None:
        if not self._episode_rows:
            return
        if self._episodes_schema is None:
            self._episodes_schema = pa.Table.from_pylist(self._episode_rows[:1]).schema
            path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._episodes_writer = pq.ParquetWriter(path, self._episodes_schema, compression="snappy", use_dictionary=True)
        self._episodes_writer.write_table(pa.Table.from_pylist(self._episode_rows, schema=self._episodes_schema))
        self._episode_rows.clear()

    # ---- end ----------------------------------------------------------------------------------------

    def finalize(self) -> None:
        """Close every file and write ``meta/info.json``, ``meta/stats.json`` and ``meta/tasks.parquet``."""
        if self.num_episodes == 0:
            raise ValueError(f"{self.root}: no episode was added")
        for video in self._videos.values():
            video.close()
        self._videos.clear()
        if self._data_writer is not None:
            self._data_writer.close()
            self._data_writer = None
        self._flush_episode_rows()
        if self._episodes_writer is not None:
            self._episodes_writer.close()
            self._episodes_writer = None

        names = list(self.tasks)
        tasks = pa.table(
            {"task_index": pa.array([self.tasks[n] for n in names], pa.int64()), "__index_level_0__": pa.array(names, pa.string())}
        )
        tasks = tasks.replace_schema_metadata({"pandas": json.dumps(_TASKS_PANDAS_METADATA)})
        pq.write_table(tasks, self.root / TASKS_PATH)

        features = {k: dict(v) for k, v in self.features.items()}
        for key in self.video_keys:
            features[key]["info"] = video_info(self.root / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0))
        info: dict[str, Any] = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": self.num_episodes,
            "total_frames": self.num_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_files_size_in_mb,
            "video_files_size_in_mb": self.video_files_size_in_mb,
            "fps": self.fps,
            "splits": {"train": f"0:{self.num_episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "features": features,
        }
        info.update(self.extra_info)
        _write_json(self.root / "meta/stats.json", _jsonable({k: self.stats[k] for k in self.features if k in self.stats}))
        _write_json(self.root / "meta/info.json", info)

    def abort(self) -> None:
        """Close open files without finishing them (the root is then garbage; the caller removes it)."""
        for video in self._videos.values():
            try:
                video.abort()
            except Exception:  # noqa: BLE001 - already failing; closing is best effort
                pass
        self._videos.clear()
        for writer in (self._data_writer, self._episodes_writer):
            if writer is not None:
                try:
                    writer.close()
                except Exception:  # noqa: BLE001
                    pass
        self._data_writer = self._episodes_writer = None


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=4, ensure_ascii=False)


def video_info(path: Path) -> dict[str, Any]:
    """The ``info`` block of a video feature, read from the file (the library's ``get_video_info``)."""
    import av  # noqa: PLC0415

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pix_fmt = stream.pix_fmt or ""
        channels = 1 if ("gray" in pix_fmt or "depth" in pix_fmt or "monochrome" in pix_fmt) else (
            4 if ("rgba" in pix_fmt or "yuva" in pix_fmt) else 3
        )
        return {
            "video.height": stream.height,
            "video.width": stream.width,
            "video.codec": stream.codec.canonical_name,
            "video.pix_fmt": pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(stream.base_rate),
            "video.channels": channels,
            "has_audio": bool(container.streams.audio),
        }
