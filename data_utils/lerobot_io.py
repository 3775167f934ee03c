"""Reading LeRobotDataset roots (codebase v3.0, and v2.1) without the ``lerobot`` library.

Layout of a v3.0 root (several episodes share one file; an episode's rows and video span are
located through ``meta/episodes``)::

    meta/info.json                               codebase_version, fps, features {key: dtype, shape}
    meta/stats.json                              per-feature statistics (mean, std, min, max, q01..q99)
    meta/tasks.parquet                           task string (pandas index) -> task_index
    meta/episodes/chunk-*/file-*.parquet         episode_index, length, tasks, data/{chunk,file}_index,
                                                 videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp}
    data/chunk-*/file-*.parquet                  one row per frame: features, timestamp, frame_index,
                                                 episode_index, index, task_index; image features as
                                                 {bytes: PNG/JPEG, path} structs
    videos/<key>/chunk-*/file-*.mp4              one stream per camera, episodes back to back

v2.1 differs only in where things are: ``meta/episodes.jsonl``, ``meta/tasks.jsonl`` and one data
parquet and one mp4 per episode (``data_path``/``video_path`` templates in info.json), each video
starting at time 0.

Frame ``t`` of episode ``e`` is shown at ``from_timestamp(e) + timestamp[t]`` in its camera's mp4,
with ``timestamp`` the data rows' column (``t / fps`` as the library writes it), which is how the
library's own reader locates it. Videos are decoded with PyAV (its wheel bundles an FFmpeg with
dav1d for AV1 and H.264/HEVC decoders; installs from PyPI alone, unlike torchcodec, which needs
FFmpeg shared libraries on the system). Random access seeks to the keyframe before the wanted
frame and decodes forward; consecutive reads continue decoding without seeking. Open containers are
kept per process (a forked DataLoader worker opens its own; file offsets are shared across fork).

Images are returned as ``(H, W, 3)`` uint8 in RGB order, the order LeRobot records.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from data_utils.hdf5_io import frame_format

SUPPORTED_VERSIONS = ("v3.0", "v2.1")
STATE_KEY = "observation.state"
ACTION_KEY = "action"
# The per-frame string feature read as reasoning when present and no other key is named.
DEFAULT_REASONING_KEY = "observation.reasoning"
INFO_PATH = "meta/info.json"
# info.json key this project adds when converting (data_utils.lerobot_write): {"source", "sim", ...}.
DEXVLA_INFO_KEY = "dexvla"
# A decoded frame must lie within this fraction of a frame interval of the wanted time: under half,
# so a missing frame is reported rather than replaced by its neighbour.
TIMESTAMP_TOLERANCE_FRAMES = 0.4


# Video readers inherited through fork, kept referenced so that they are never freed in the child.
_FORKED_LEFTOVERS: list[Any] = []


def recorded_sim(info: dict[str, Any]) -> bool:
    """How frames pair with actions in a LeRobot root, from its ``meta/info.json`` (as a dict).

    ``True`` (the LeRobot convention, and ACT's simulated episodes): frame ``t`` pairs with
    ``action[t:]``. ``False``: converted from real-robot ACT HDF5 (``attrs['sim']`` false), whose
    actions lag one step; training pairs frame ``t`` with ``action[t-1:]``
    (``data_utils.dataset.chunk_start``), exactly as on the HDF5. Roots without the ``"dexvla"`` key
    follow the LeRobot convention.
    """
    extra = info.get(DEXVLA_INFO_KEY)
    if isinstance(extra, dict) and "sim" in extra:
        return bool(extra["sim"])
    return True



class LeRobotFormatError(ValueError):
    """A LeRobot root that does not hold what its metadata promises; the message names file and key."""


def is_lerobot_root(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a LeRobotDataset root: it has ``meta/info.json`` naming a ``codebase_version``.

    An ``info.json`` that is not valid JSON still counts, so that loading reports it rather than
    the directory being taken for an (empty) HDF5 folder.
    """
    info = Path(path) / INFO_PATH
    if not info.is_file():
        return False
    try:
        return "codebase_version" in json.loads(info.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return True


@dataclass(frozen=True)
class VideoSpan:
    """Where an episode's frames of one camera are: ``path`` between two times in seconds."""

    path: Path
    from_timestamp: float
    to_timestamp: float


@dataclass(frozen=True)
class LeRobotEpisode:
    """One episode's metadata: ``index`` is its ``episode_index``, ``tasks`` its task strings."""

    index: int
    length: int
    tasks: tuple[str, ...]
    data_path: Path
    videos: dict[str, VideoSpan] = field(default_factory=dict)

    @property
    def task(self) -> str:
        """The episode's instruction: its first task (the library records one per episode as a rule)."""
        return self.tasks[0] if self.tasks else ""


@dataclass
class EpisodeArrays:
    """The non-image data of one episode.

    ``state (T, Ds)`` and ``action (T, Da)`` float32, ``timestamp (T,)`` float64 seconds from the
    episode's start, ``task`` per frame, ``reasoning`` per frame (``None`` without a reasoning feature).
    """

    state: np.ndarray
    action: np.ndarray
    timestamp: np.ndarray
    task: list[str]
    reasoning: list[str] | None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LeRobotFormatError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LeRobotFormatError(f"{path}: not valid JSON ({err})") from err


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise LeRobotFormatError(f"{path}: missing")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise LeRobotFormatError(f"{path}:{number}: not valid JSON ({err})") from err
    return rows


def _column_matrix(table: pa.Table, key: str, width: int, source: str) -> np.ndarray:
    """Column ``key`` of list (or scalar, for width 1) values as ``(rows, width)`` float32."""
    column = table.column(key).combine_chunks()
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) or pa.types.is_large_list(column.type):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths.min() != width or lengths.max() != width):
            raise LeRobotFormatError(
                f"{source}: feature '{key}' has rows of length {sorted(set(lengths.tolist()))}, expected shape ({width},)"
            )
        values = column.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.float32).reshape(len(column), width)
    if width == 1 and (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, 1)
    raise LeRobotFormatError(f"{source}: feature '{key}' is of type {column.type}, expected shape ({width},) numbers")


def _image_hw(key: str, feature: dict[str, Any], source: str) -> tuple[int, int]:
    """``(H, W)`` of an image or video feature, whatever axis order its ``names`` give."""
    shape = list(feature.get("shape") or [])
    names = list(feature.get("names") or [])
    if len(shape) != 3:
        raise LeRobotFormatError(f"{source}: feature '{key}' has shape {shape}, expected (H, W, 3) or (3, H, W)")
    if "height" in names and "width" in names:
        return int(shape[names.index("height")]), int(shape[names.index("width")])
    return (int(shape[1]), int(shape[2])) if shape[0] == 3 and shape[2] != 3 else (int(shape[0]), int(shape[1]))


def decode_image_bytes(data: bytes, source: str) -> np.ndarray:
    """A PNG or JPEG buffer (only those two, told by magic number) -> ``(H, W, 3)`` uint8 RGB."""
    fmt = frame_format(data)
    if fmt is None:
        raise LeRobotFormatError(f"{source}: not a PNG or JPEG image; its first bytes are {data[:8].hex(' ').upper()}")
    try:
        with Image.open(io.BytesIO(data), formats=(fmt,)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as err:  # noqa: BLE001 - Pillow raises many types on bad data; all mean "does not decode"
        raise LeRobotFormatError(f"{source}: {fmt} image does not decode ({type(err).__name__}: {err})") from err


class _VideoReader:
    """One open mp4 of one camera: decodes the frame at a time, seeking only when it must.

    ``forward_frames``: a wanted frame at most this many frames after the last decoded one is reached
    by decoding on (no seek); further, or backwards, seeks to the keyframe before it.

    Decoders that hold frames back (H.264/HEVC streams that signal reordering, as libx264 does even
    with a GOP of 2; or frame threads) only output a frame once later packets are in. On a random read
    the reader drains the decoder instead, right after the wanted frame's packet, rather than decoding
    packets it will not use; the next read then seeks. When reads go in order (the wanted frame lies
    just after the last one returned) it decodes on without draining, so in-order reading costs one
    decode per frame.
    """

    def __init__(self, path: Path, threads: int, forward_frames: int) -> None:
        import av  # noqa: PLC0415 - only video roots need it

        self.path = path
        self.container = av.open(str(path))
        if not self.container.streams.video:
            self.container.close()
            raise LeRobotFormatError(f"{path}: no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.codec_context.thread_count = threads
        self.threads = threads
        self.time_base = float(self.stream.time_base)
        self.forward_frames = forward_frames
        self._packets: Any = None  # the demuxer, positioned after the last packet sent to the decoder
        self._pending: deque[Any] = deque()  # frames out of the decoder, not looked at yet
        self._last_time: float | None = None  # time of the last frame looked at
        # The last frame returned and its time: a repeated read (several samples of one step, or a
        # validation pass) gets a copy instead of a seek and a decode.
        self._last_image: np.ndarray | None = None
        self._last_image_time: float | None = None
        # Work counters (benchmarks, tests): seeks, packets sent to the decoder, frames looked at, drains.
        self.seeks = 0
        self.packets = 0
        self.decoded = 0
        self.drains = 0

    def close(self) -> None:
        self.container.close()

    def end_time(self) -> float | None:
        """Where the stream ends in seconds (last frame's time + its duration), from the container's header."""
        if self.stream.duration is not None:
            start = self.stream.start_time or 0
            return (start + self.stream.duration) * self.time_base
        if self.container.duration is not None:
            return self.container.duration / 1_000_000
        return None

    def _within(self, last: float | None, time: float, interval: float, tolerance: float) -> bool:
        """Whether ``time`` lies after ``last`` by more than ``tolerance`` and at most ``forward_frames`` frames.

        A time that rounds to just above ``last`` (e.g. 1.6 + 1.2 > 2.8) is that same frame, not the next one.
        """
        return last is not None and last + tolerance < time <= last + self.forward_frames * interval + tolerance

    def _seek(self, time: float) -> None:
        # Seek to the last keyframe at or before ``time``; PyAV flushes the decoder.
        self.container.seek(max(0, math.floor(time / self.time_base)), stream=self.stream, backward=True)
        self._packets = self.container.demux(self.stream)
        self._pending.clear()
        self._last_time = None
        self.seeks += 1

    def _wanted_in(self, frames: Any, time: float, tolerance: float) -> bool:
        return any(f.pts is not None and abs(f.pts * self.time_base - time) <= tolerance for f in frames)

    def frame_at(self, time: float, interval: float) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB of the frame shown at ``time`` seconds (within 0.4 ``interval``)."""
        tolerance = TIMESTAMP_TOLERANCE_FRAMES * interval
        if self._last_image is not None and abs(time - self._last_image_time) <= tolerance:
            return self._last_image.copy()
        drain = False
        if self._packets is None or not self._within(self._last_time, time, interval, tolerance):
            # The wanted frame lies within ``time +- tolerance`` and is the only frame there (tolerance <
            # half an interval). Drain only on a random read, so that reading in order keeps decoding on.
            drain = not self._within(self._last_image_time, time, interval, tolerance)
            self._seek(time + tolerance)
        while True:
            while self._pending:
                frame = self._pending.popleft()
                self.decoded += 1
                if frame.pts is None:
                    continue
                frame_time = frame.pts * self.time_base
                self._last_time = frame_time
                if frame_time < time - tolerance:
                    continue
                if frame_time > time + tolerance:
                    self._packets = None
                    raise LeRobotFormatError(
                        f"{self.path}: no frame at {time:.6f} s (the next one is at {frame_time:.6f} s); "
                        "the video skips frames or its timestamps disagree with the dataset's"
                    )
                # One swscale thread per decoder thread (workers already run in parallel; its default,
                # one per CPU, halves the speed here); fast bilinear: the same pixels for a same-size
                # conversion, the cheaper set-up.
                image = frame.to_ndarray(format="rgb24", threads=self.threads, interpolation="FAST_BILINEAR")
                self._last_image, self._last_image_time = image, frame_time
                return image.copy()
            if drain and self._packets is None:  # drained, and the wanted frame did not come out
                raise LeRobotFormatError(f"{self.path}: no frame at {time:.6f} s though its packet was decoded")
            packet = next(self._packets, None)
            if packet is None:  # the demuxer's last (empty) packet has flushed the decoder
                self._packets = None
                end = self._last_time
                raise LeRobotFormatError(
                    f"{self.path}: the video ends (last frame at {end if end is None else f'{end:.6f}'} s) before "
                    f"{time:.6f} s; it does not cover the episode's timestamps"
                )
            self._pending.extend(packet.decode())
            self.packets += 1
            if (
                drain
                and packet.pts is not None
                and abs(packet.pts * self.time_base - time) <= tolerance
                and not self._wanted_in(self._pending, time, tolerance)
            ):
                # The wanted frame is in but held back: drain it out; the decoder takes no packet after that.
                self._pending.extend(self.stream.codec_context.decode(None))
                self._packets = None
                self.drains += 1


class _DataFile:
    """One open data parquet: its footer read once, and which row groups may hold an episode.

    Writers put one episode (the library's writer, ours) or many (pandas ``to_parquet``) in a row
    group; the ``episode_index`` column's statistics tell which groups to read, so reading an episode
    costs its row groups, not the file's footer and a dataset scan each time.
    """

    def __init__(self, path: Path) -> None:
        self.file = pq.ParquetFile(path)
        self.names = set(self.file.schema_arrow.names)
        meta = self.file.metadata
        leaf = next((i for i in range(meta.num_columns) if meta.schema.column(i).path == "episode_index"), None)
        self.ranges: list[tuple[int, int] | None] = []
        for group in range(meta.num_row_groups):
            stats = None if leaf is None else meta.row_group(group).column(leaf).statistics
            known = stats is not None and stats.has_min_max
            self.ranges.append((int(stats.min), int(stats.max)) if known else None)

    def read_episode(self, index: int, columns: Sequence[str]) -> pa.Table:
        """Rows whose ``episode_index`` is ``index`` (in file order), only ``columns`` (which include it)."""
        groups = [g for g, r in enumerate(self.ranges) if r is None or r[0] <= index <= r[1]]
        table = self.file.read_row_groups(groups, columns=list(columns))
        episode = table.column("episode_index")
        if pc.all(pc.equal(episode, index)).as_py() is not True:
            table = table.filter(pc.equal(episode, index))
        return table

    def close(self) -> None:
        self.file.close()


class LeRobotRoot:
    """A LeRobotDataset root: episode metadata, per-episode arrays and single frames.

    Args:
        root: the folder holding ``meta/info.json``.
        state_key / action_key: features read as state and action.
        reasoning_key: per-frame string feature read as reasoning; default ``observation.reasoning``
            when the dataset has it (else no reasoning). Naming a missing key is an error.
        decoder_threads: FFmpeg threads per open video (DataLoader workers already run in parallel).
        max_open_videos: open containers (and open data parquets) kept per process (least recently used closed).
        cache_episodes: episodes whose image-feature columns (encoded images, large) are kept per process.
        cache_frames: frames of state/action/timestamps/text kept per process (whole episodes, least
            recently used dropped first; about 150 bytes a frame for 14-joint state and action), so that
            random access reads an episode's rows once per worker rather than once per sample.

    Cheap to construct (reads only metadata) and to pickle (caches are not carried).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        state_key: str = STATE_KEY,
        action_key: str = ACTION_KEY,
        reasoning_key: str | None = None,
        decoder_threads: int = 1,
        max_open_videos: int = 16,
        cache_episodes: int = 4,
        forward_frames: int = 4,
        cache_frames: int = 100_000,
    ) -> None:
        self.root = Path(root)
        info_path = self.root / INFO_PATH
        self.info: dict[str, Any] = _read_json(info_path)
        self.version = str(self.info.get("codebase_version", ""))
        if self.version not in SUPPORTED_VERSIONS:
            raise LeRobotFormatError(
                f"{info_path}: codebase_version {self.version!r} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})"
            )
        self.features: dict[str, dict[str, Any]] = dict(self.info.get("features") or {})
        try:
            self.fps = float(self.info["fps"])
        except (KeyError, TypeError, ValueError):
            raise LeRobotFormatError(f"{info_path}: key 'fps' missing or not a number") from None
        self.state_key, self.action_key = state_key, action_key
        if reasoning_key is None and DEFAULT_REASONING_KEY in self.features:
            reasoning_key = DEFAULT_REASONING_KEY
        self.reasoning_key = reasoning_key
        self.state_dim = self._vector_dim(state_key, "state")
        self.action_dim = self._vector_dim(action_key, "action")
        if reasoning_key is not None:
            self._require_feature(reasoning_key, "reasoning")
            if self.features[reasoning_key].get("dtype") != "string":
                raise LeRobotFormatError(
                    f"{info_path}: reasoning feature '{reasoning_key}' has dtype "
                    f"{self.features[reasoning_key].get('dtype')!r}, expected 'string'"
                )
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self.image_keys = [k for k, f in self.features.items() if f.get("dtype") == "image"]
        self.decoder_threads = int(decoder_threads)
        self.max_open_videos = int(max_open_videos)
        self.cache_episodes = int(cache_episodes)
        self.cache_frames = int(cache_frames)
        self.forward_frames = int(forward_frames)
        self.task_names = self._load_tasks()
        self.episodes: list[LeRobotEpisode] = self._load_episodes()
        self._by_index = {ep.index: ep for ep in self.episodes}
        self._reset_caches()

    # ---- metadata -------------------------------------------------------------------------------

    def _require_feature(self, key: str, role: str) -> dict[str, Any]:
        if key not in self.features:
            raise LeRobotFormatError(
                f"{self.root / INFO_PATH}: feature '{key}' ({role}) missing; features are {sorted(self.features)}"
            )
        return self.features[key]

    def _vector_dim(self, key: str, role: str) -> int:
        feature = self._require_feature(key, role)
        shape = list(feature.get("shape") or [])
        if len(shape) != 1 or not isinstance(shape[0], int) or shape[0] <= 0:
            raise LeRobotFormatError(f"{self.root / INFO_PATH}: feature '{key}' ({role}) has shape {shape}, expected (D,)")
        return int(shape[0])

    @property
    def camera_keys(self) -> list[str]:
        """Image features, stored as video or as images, in ``info.json`` order."""
        return [k for k, f in self.features.items() if f.get("dtype") in ("video", "image")]

    @property
    def total_frames(self) -> int:
        return sum(ep.length for ep in self.episodes)

    def image_shape(self, camera: str) -> tuple[int, int, int]:
        """``(H, W, 3)`` of ``camera`` as ``info.json`` declares it."""
        feature = self._camera_feature(camera)
        return (*_image_hw(camera, feature, str(self.root / INFO_PATH)), 3)

    def _camera_feature(self, camera: str) -> dict[str, Any]:
        feature = self._require_feature(camera, "camera")
        if feature.get("dtype") not in ("video", "image"):
            raise LeRobotFormatError(
                f"{self.root / INFO_PATH}: feature '{camera}' has dtype {feature.get('dtype')!r}, expected 'video' or 'image'"
            )
        return feature

    def _load_tasks(self) -> dict[int, str]:
        if self.version == "v2.1":
            path = self.root / "meta/tasks.jsonl"
            return {int(row["task_index"]): str(row["task"]) for row in _read_jsonl(path)}
        path = self.root / "meta/tasks.parquet"
        if not path.is_file():
            raise LeRobotFormatError(f"{path}: missing")
        table = pq.read_table(path)
        # The library writes a pandas frame indexed by the task string; other writers use a column.
        names = [n for n in ("task", "__index_level_0__") if n in table.column_names]
        if not names and table.schema.pandas_metadata:
            names = [n for n in table.schema.pandas_metadata.get("index_columns", []) if isinstance(n, str)]
        if not names or "task_index" not in table.column_names:
            raise LeRobotFormatError(f"{path}: expected a 'task_index' column and the task strings; columns are {table.column_names}")
        tasks = table.column(names[0]).to_pylist()
        return {int(i): str(s) for i, s in zip(table.column("task_index").to_pylist(), tasks, strict=True)}

    def _load_episodes(self) -> list[LeRobotEpisode]:
        if self.version == "v2.1":
            return self._load_episodes_v21()
        folder = self.root / "meta/episodes"
        paths = sorted(folder.glob("chunk-*/file-*.parquet"))
        if not paths:
            raise LeRobotFormatError(f"{folder}: no chunk-*/file-*.parquet episode metadata")
        wanted = ["episode_index", "length", "tasks", "data/chunk_index", "data/file_index"]
        for key in self.video_keys:
            wanted += [f"videos/{key}/{name}" for name in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
        data_template = str(self.info.get("data_path", "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"))
        video_template = str(
            self.info.get("video_path", "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
        )
        episodes = []
        for path in paths:
            schema = pq.read_schema(path)
            missing = [name for name in wanted if name not in schema.names]
            if missing:
                raise LeRobotFormatError(f"{path}: episode metadata lacks column(s) {missing}")
            for row in pq.read_table(path, columns=wanted).to_pylist():
                videos = {
                    key: VideoSpan(
                        self.root
                        / video_template.format(
                            video_key=key,
                            chunk_index=int(row[f"videos/{key}/chunk_index"]),
                            file_index=int(row[f"videos/{key}/file_index"]),
                        ),
                        float(row[f"videos/{key}/from_timestamp"]),
                        float(row[f"videos/{key}/to_timestamp"]),
                    )
                    for key in self.video_keys
                }
                data_path = self.root / data_template.format(
                    chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
                )
                episodes.append(
                    LeRobotEpisode(int(row["episode_index"]), int(row["length"]), tuple(row["tasks"] or ()), data_path, videos)
                )
        episodes.sort(key=lambda ep: ep.index)
        return episodes

    def _load_episodes_v21(self) -> list[LeRobotEpisode]:
        chunks_size = int(self.info.get("chunks_size", 1000))
        data_template = str(self.info.get("data_path", "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"))
        video_template = str(
            self.info.get("video_path", "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")
        )
        episodes = []
        for row in _read_jsonl(self.root / "meta/episodes.jsonl"):
            index, length = int(row["episode_index"]), int(row["length"])
            chunk = index // chunks_size
            videos = {
                key: VideoSpan(
                    self.root / video_template.format(episode_chunk=chunk, video_key=key, episode_index=index),
                    0.0,
                    length / self.fps,
                )
                for key in self.video_keys
            }
            data_path = self.root / data_template.format(episode_chunk=chunk, episode_index=index)
            episodes.append(LeRobotEpisode(index, length, tuple(row.get("tasks") or ()), data_path, videos))
        episodes.sort(key=lambda ep: ep.index)
        return episodes

    def episode(self, index: int) -> LeRobotEpisode:
        """The episode whose ``episode_index`` is ``index``."""
        try:
            return self._by_index[int(index)]
        except KeyError:
            raise LeRobotFormatError(f"{self.root}: no episode with episode_index {index}") from None

    def read_stats(self) -> dict[str, dict[str, np.ndarray]]:
        """``meta/stats.json``: ``{feature: {stat: array}}`` (e.g. ``mean``, ``std``, ``min``, ``max``, ``q01``)."""
        raw = _read_json(self.root / "meta/stats.json")
        return {key: {name: np.asarray(value) for name, value in stats.items()} for key, stats in raw.items()}

    # ---- per-process caches -----------------------------------------------------------------------

    def _reset_caches(self) -> None:
        self._pid = os.getpid()
        self._videos: OrderedDict[Path, _VideoReader] = OrderedDict()
        self._arrays: OrderedDict[int, EpisodeArrays] = OrderedDict()
        self._image_columns: OrderedDict[tuple[int, str], list[Any]] = OrderedDict()
        self._data_files: OrderedDict[Path, _DataFile] = OrderedDict()
        self._cached_frames = 0

    def _check_pid(self) -> None:
        # After a fork the parent's containers share file offsets with the parent: never use them here.
        # Nor free them: closing a decoder joins its threads, which do not exist in the child (it hangs).
        if self._pid != os.getpid():
            _FORKED_LEFTOVERS.append(self._videos)
            self._reset_caches()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_videos", "_arrays", "_image_columns", "_data_files"):
            state[name] = OrderedDict()
        state["_cached_frames"] = 0
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_caches()

    def close(self) -> None:
        """Close this process's open videos."""
        self._check_pid()
        for reader in self._videos.values():
            reader.close()
        for data in self._data_files.values():
            data.close()
        self._reset_caches()

    def _video(self, path: Path) -> _VideoReader:
        self._check_pid()
        reader = self._videos.get(path)
        if reader is None:
            if not path.is_file():
                raise LeRobotFormatError(f"{path}: video file missing")
            reader = _VideoReader(path, self.decoder_threads, self.forward_frames)
            self._videos[path] = reader
            while len(self._videos) > self.max_open_videos:
                self._videos.popitem(last=False)[1].close()
        self._videos.move_to_end(path)
        return reader

    def _data_file(self, ep: LeRobotEpisode) -> _DataFile:
        path = ep.data_path
        data = self._data_files.get(path)
        if data is None:
            if not path.is_file():
                raise LeRobotFormatError(f"{path}: data file of episode {ep.index} missing")
            try:
                data = _DataFile(path)
            except (pa.ArrowException, OSError) as err:
                raise LeRobotFormatError(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from err
            self._data_files[path] = data
            while len(self._data_files) > self.max_open_videos:
                self._data_files.popitem(last=False)[1].close()
        self._data_files.move_to_end(path)
        return data

    def _episode_table(self, ep: LeRobotEpisode, columns: Sequence[str]) -> pa.Table:
        """Rows of episode ``ep`` (ordered by ``frame_index``), only ``columns``; checks the row count."""
        path = ep.data_path
        data = self._data_file(ep)
        missing = [c for c in (*columns, "episode_index", "frame_index") if c not in data.names]
        if missing:
            raise LeRobotFormatError(f"{path}: column(s) {missing} missing (episode {ep.index})")
        table = data.read_episode(ep.index, list(dict.fromkeys([*columns, "frame_index", "episode_index"])))
        frame_index = table.column("frame_index").to_numpy()
        order = np.argsort(frame_index, kind="stable")
        if table.num_rows != ep.length or not np.array_equal(frame_index[order], np.arange(ep.length)):
            raise LeRobotFormatError(
                f"{path}: episode {ep.index} has {table.num_rows} rows with frame_index "
                f"{frame_index.min() if len(frame_index) else '-'}..{frame_index.max() if len(frame_index) else '-'}, "
                f"expected {ep.length} rows with frame_index 0..{ep.length - 1} (meta/episodes length)"
            )
        if not np.array_equal(order, np.arange(len(order))):
            table = table.take(pa.array(order))
        return table

    def read_episode_arrays(self, index: int) -> EpisodeArrays:
        """State, action, timestamps, tasks and reasoning of episode ``index`` (see :class:`EpisodeArrays`)."""
        self._check_pid()
        cached = self._arrays.get(int(index))
        if cached is not None:
            self._arrays.move_to_end(int(index))
            return cached
        ep = self.episode(index)
        columns = [self.state_key, self.action_key, "timestamp", "task_index"]
        if self.reasoning_key is not None:
            columns.append(self.reasoning_key)
        table = self._episode_table(ep, columns)
        source = str(ep.data_path)
        task_index = table.column("task_index").to_pylist()
        unknown = sorted({i for i in task_index if i not in self.task_names})
        if unknown:
            raise LeRobotFormatError(f"{source}: episode {ep.index} uses task_index {unknown}, absent from the tasks table")
        reasoning = None
        if self.reasoning_key is not None:
            # One string object per distinct text (sub-steps repeat over many frames): the cache stays small.
            distinct: dict[str, str] = {}
            reasoning = [
                distinct.setdefault(text, text)
                for text in ("" if s is None else str(s) for s in table.column(self.reasoning_key).to_pylist())
            ]
        arrays = EpisodeArrays(
            state=_column_matrix(table, self.state_key, self.state_dim, source),
            action=_column_matrix(table, self.action_key, self.action_dim, source),
            timestamp=np.asarray(table.column("timestamp").to_numpy(zero_copy_only=False), dtype=np.float64).reshape(-1),
            task=[self.task_names[i] for i in task_index],
            reasoning=reasoning,
        )
        self._arrays[int(index)] = arrays
        self._cached_frames += len(arrays.timestamp)
        while len(self._arrays) > 1 and self._cached_frames > self.cache_frames:
            self._cached_frames -= len(self._arrays.popitem(last=False)[1].timestamp)
        return arrays

    # ---- frames ---------------------------------------------------------------------------------

    def read_frame(self, camera: str, index: int, t: int) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB frame ``t`` of episode ``index`` from ``camera`` (video or image feature)."""
        feature = self._camera_feature(camera)
        ep = self.episode(index)
        if not 0 <= t < ep.length:
            raise IndexError(f"{self.root}: frame {t} out of range for episode {ep.index} of length {ep.length}")
        if feature["dtype"] == "video":
            image = self._read_video_frame(camera, ep, t)
            source = f"{ep.videos[camera].path} (camera '{camera}', episode {ep.index}, frame {t})"
        else:
            image, source = self._read_image_frame(camera, ep, t)
        expected = self.image_shape(camera)
        if image.shape != expected:
            raise LeRobotFormatError(f"{source}: decoded frame has shape {image.shape}, expected {expected} (meta/info.json)")
        return image

    def _read_video_frame(self, camera: str, ep: LeRobotEpisode, t: int) -> np.ndarray:
        span = ep.videos[camera]
        interval = 1.0 / self.fps
        time = span.from_timestamp + float(self.read_episode_arrays(ep.index).timestamp[t])
        # The span must hold the frame (to_timestamp is where the episode's last frame ends).
        if time > span.to_timestamp - interval + TIMESTAMP_TOLERANCE_FRAMES * interval:
            raise LeRobotFormatError(
                f"{span.path}: camera '{camera}', episode {ep.index}, frame {t} at {time:.6f} s lies outside the "
                f"episode's span [{span.from_timestamp:.6f}, {span.to_timestamp:.6f}) s"
            )
        try:
            return self._video(span.path).frame_at(time, interval)
        except LeRobotFormatError as err:
            raise LeRobotFormatError(f"{err} (camera '{camera}', episode {ep.index}, frame {t})") from None

    def _read_image_frame(self, camera: str, ep: LeRobotEpisode, t: int) -> tuple[np.ndarray, str]:
        self._check_pid()
        key = (ep.index, camera)
        column = self._image_columns.get(key)
        if column is None:
            column = self._episode_table(ep, [camera]).column(camera).to_pylist()
            self._image_columns[key] = column
            while len(self._image_columns) > self.cache_episodes:
                self._image_columns.popitem(last=False)
        self._image_columns.move_to_end(key)
        source = f"{ep.data_path}: image feature '{camera}', episode {ep.index}, frame {t}"
        cell = column[t]
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            path = cell.get("path") if isinstance(cell, dict) else None
            if not path:
                raise LeRobotFormatError(f"{source}: no image bytes and no path")
            file = Path(path) if Path(path).is_absolute() else self.root / path
            if not file.is_file():
                raise LeRobotFormatError(f"{source}: no image bytes, and its path {file} does not exist")
            data = file.read_bytes()
        return decode_image_bytes(bytes(data), source), source

    # ---- checks ---------------------------------------------------------------------------------

    def problems(self, cameras: Sequence[str] | None = None) -> list[str]:
        """One line per problem: unreadable episodes, non-finite state/action, missing cameras, videos that
        do not cover an episode's span or have another resolution. Decodes no frames."""
        lines: list[str] = []
        cameras = list(self.camera_keys if cameras is None else cameras)
        for camera in cameras:
            try:
                self._camera_feature(camera)
            except LeRobotFormatError as err:
                lines.append(str(err))
        cameras = [c for c in cameras if c in self.features and self.features[c].get("dtype") in ("video", "image")]
        interval = 1.0 / self.fps
        for ep in self.episodes:
            try:
                arrays = self.read_episode_arrays(ep.index)
            except LeRobotFormatError as err:
                lines.append(str(err))
                continue
            for name, values in (("state", arrays.state), ("action", arrays.action)):
                bad = ~np.isfinite(values)
                if bad.any():
                    frames = np.flatnonzero(bad.any(axis=1))
                    key = self.state_key if name == "state" else self.action_key
                    lines.append(
                        f"{ep.data_path}: feature '{key}' of episode {ep.index} has {int(bad.sum())} non-finite "
                        f"value(s), first at frame {int(frames[0])}"
                    )
            for camera in cameras:
                if self.features[camera]["dtype"] != "video":
                    continue
                span = ep.videos[camera]
                try:
                    reader = self._video(span.path)
                except LeRobotFormatError as err:
                    lines.append(f"{err} (camera '{camera}', episode {ep.index})")
                    continue
                except Exception as err:  # noqa: BLE001 - FFmpeg errors on a corrupt file have many types
                    lines.append(f"{span.path}: does not open as a video ({type(err).__name__}: {err})")
                    continue
                end = reader.end_time()
                if end is not None and span.to_timestamp > end + TIMESTAMP_TOLERANCE_FRAMES * interval:
                    lines.append(
                        f"{span.path}: camera '{camera}', episode {ep.index} spans [{span.from_timestamp:.6f}, "
                        f"{span.to_timestamp:.6f}) s but the video ends at {end:.6f} s"
                    )
                last = span.from_timestamp + float(arrays.timestamp[-1]) if len(arrays.timestamp) else span.from_timestamp
                if last > span.to_timestamp - interval + TIMESTAMP_TOLERANCE_FRAMES * interval:
                    lines.append(
                        f"{span.path}: camera '{camera}', episode {ep.index}: its last frame at {last:.6f} s lies past "
                        f"the span's end {span.to_timestamp:.6f} s"
                    )
                height, width, _ = self.image_shape(camera)
                context = reader.stream.codec_context
                if (context.height, context.width) != (height, width):
                    lines.append(
                        f"{span.path}: camera '{camera}' is {context.width}x{context.height}, meta/info.json says "
                        f"{width}x{height}"
                    )
        return list(dict.fromkeys(lines))  # a file shared by episodes reports a resolution mismatch once
